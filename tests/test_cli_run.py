"""`moesim run`: the bundled scenarios run end to end; bad input gives one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moesim.cli import main
from moesim.trace.format import RouterTrace, save_trace

ROOT = Path(__file__).resolve().parents[1]
STABLE_KEYS = {
    "a2a_bytes",
    "local_bytes",
    "per_layer",
    "imbalance",
    "latency",
    "ttft_s",
    "tpot_s",
    "tokens_per_s",
}


@pytest.mark.parametrize("placement", ["ep8", "tp8", "ep4xdp2", "sp8"])
def test_bundled_scenarios_print_and_write_json(
    placement: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each named layout prints the per-layer table and writes the documented JSON keys."""
    out = tmp_path / "r.json"
    scenario = ROOT / "scenarios" / f"mixtral-8x7b-{placement}.yaml"
    assert main(["run", str(scenario), "--fidelity", "analytic", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "expert max/mean" in table and "TPOT" in table
    result = json.loads(out.read_text())
    assert STABLE_KEYS <= set(result)
    assert len(result["per_layer"]) == 32
    layer = result["per_layer"][0]
    assert layer["a2a_bytes"] == layer["dispatch_bytes"] + layer["combine_bytes"]
    assert result["a2a_bytes"] == sum(row["a2a_bytes"] for row in result["per_layer"])
    if placement == "tp8":
        assert result["a2a_bytes"] == 0


def test_run_without_topology_reports_traffic_only(capsys: pytest.CaptureFixture[str]) -> None:
    """No topology: traffic and imbalance, no latency keys. 333 real tokens x 2 x 4096 x 2 bytes
    per layer, of which EP8 keeps about 1/8 local."""
    assert main(["run", "--placement", "EP8", "--json", "-", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "latency" not in result
    per_layer_total = 333 * 2 * 2 * 4096 * 2
    first = result["per_layer"][0]
    assert first["a2a_bytes"] + first["local_bytes"] == per_layer_total


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moesim: error:") and "\n" not in err and "Traceback" not in err
    return err


def test_malformed_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A file that is not an .npz archive is named in one line."""
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    assert "not a readable .npz" in _error(["run", "--trace", str(bad)], capsys)


def test_trace_with_ids_beyond_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Expert id 9 in a Mixtral (8 experts) run names the id and the fix."""
    experts = np.zeros((32, 4, 2), dtype=np.int16)
    experts[:, :, 1] = 1
    experts[3, 2, 1] = 9
    path = tmp_path / "t.npz"
    save_trace(RouterTrace(experts=experts, seq_id=np.zeros(4), pos=np.arange(4)), path)
    err = _error(["run", "--trace", str(path)], capsys)
    assert "expert id 9" in err and "--model" in err


@pytest.mark.parametrize(
    ("placement", "needle"),
    [
        ("EP16", "exceeds"),
        ("EP3", "divisible"),
        ("TP3xSP2xEP2", "attention heads"),
        ("XP8", "cannot read"),
    ],
)
def test_invalid_layouts(placement: str, needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Layouts that do not fit the model or do not multiply out fail with the reason."""
    assert needle in _error(["run", "--placement", placement], capsys)


def test_layout_larger_than_topology(capsys: pytest.CaptureFixture[str]) -> None:
    """EP8 on the 4-GPU RTX 4090 box names both sizes."""
    err = _error(["run", "--placement", "EP8", "--topology", "rtx4090-4x-pcie"], capsys)
    assert "needs 8 GPUs" in err


def test_malformed_scenario_yaml(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bad YAML and unknown fields name the file and the field."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    assert "not valid YAML" in _error(["run", str(broken)], capsys)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("placment: EP8\n")
    assert "placment" in _error(["run", str(unknown)], capsys)


def test_layout_that_does_not_fit_in_memory(capsys: pytest.CaptureFixture[str]) -> None:
    """Mixtral-8x7B in bf16 (93 GB of weights) on one 80 GB H100 names the weights and the fix."""
    err = _error(["run", "--placement", "EP1", "--topology", "dgx-h100"], capsys)
    assert "does not fit in memory" in err and "weights" in err and "fp8" in err


def test_synthetic_bundled_scenario_needs_no_reuse_or_tiling(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The bundled synthetic trace has 32 independent sequences of 2048 tokens: a batch of 32 at
    2k context replays each once, so the only note is the chunked prefill."""
    scenario = ROOT / "scenarios" / "mixtral-8x7b-ep8-synth.yaml"
    assert main(["run", str(scenario), "--fidelity", "analytic", "--json", "-", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["inputs"]["notes"] == [
        "prefill: TTFT sums 8 chunk steps of at most 8192 tokens (prefill_chunk_tokens)"
    ]
    assert result["inputs"]["trace_tokens"] == 32 * 2048
