"""Measurement JSON and the byte check (no torch): expected bytes per phase and mismatch reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from moesim.cli import validate as validate_cli
from moesim.errors import ConfigError
from moesim.inputs.models import get_model
from moesim.traffic.placement import parse_placement
from moesim.traffic.traffic import compute_traffic
from tests.helpers import tiny_model, trace_from
from validate.measurement import (
    PHASES,
    build_measurement,
    check_bytes,
    expected_bytes,
    live_inputs,
    load_measurement,
    scaled_model_update,
    traffic_for_inputs,
)

SENT, RECV, LOCAL = 0, 1, 2


def _synthetic(placement: str = "TP2xEP2") -> tuple[dict, object]:
    """A measurement whose bytes are exactly the simulator's, for a slice of the bundled trace."""
    inputs = live_inputs(model="mixtral-8x7b", trace="bundled:mixtral8x7b_humaneval_decode",
                         placement=placement, backend="gloo", scale=1 / 64, layers=2, tokens=40)
    traffic = traffic_for_inputs(inputs)
    counts = expected_bytes(traffic)
    num_layers, world = counts.shape[:2]
    times = np.full((1, num_layers, world, len(PHASES)), 1e-3)
    return build_measurement(inputs, times, counts, np.full((1, world), 1e-2), 1.0), traffic


def _parser() -> argparse.ArgumentParser:
    """A parser with only the validate command group registered."""
    parser = argparse.ArgumentParser()
    validate_cli.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_expected_bytes_ep2_hand_worked() -> None:
    """EP2, hidden 4 bf16 (8 B): a token's vector to a remote expert is 8 B sent and received,
    to a local expert 8 B local; combine is the same traffic reversed."""
    # layer 0: token0 (rank 0) -> experts 0 (rank 0), 2 (rank 1); token1 (rank 1) -> 1, 3
    # layer 1: both tokens -> experts 2, 3 (rank 1)
    trace = trace_from([[[0, 2], [1, 3]], [[2, 3], [2, 3]]])
    traffic = compute_traffic(trace, tiny_model(), parse_placement("EP2"))
    got = expected_bytes(traffic)
    dispatch, combine = PHASES.index("dispatch"), PHASES.index("combine")
    assert got[0, 0, dispatch].tolist() == [8, 8, 8]
    assert got[0, 1, dispatch].tolist() == [8, 8, 8]
    assert got[1, 0, dispatch].tolist() == [16, 0, 0]
    assert got[1, 1, dispatch].tolist() == [0, 16, 16]
    assert got[1, 0, combine].tolist() == [0, 16, 0]
    assert got[1, 1, combine].tolist() == [16, 0, 16]
    others = [p for p, name in enumerate(PHASES) if name not in ("dispatch", "combine")]
    assert not got[:, :, others].any()


def test_expected_bytes_tp2_ring_uneven_chunks() -> None:
    """TP2 on 3 tokens: chunks of 1 and 2 tokens (8 and 16 B). Ring reduce-scatter: each rank
    sends every chunk but its own; ring all-gather: every chunk but its successor's."""
    trace = trace_from([[[0, 1]] * 3, [[2, 3]] * 3])
    traffic = compute_traffic(trace, tiny_model(), parse_placement("TP2"))
    got = expected_bytes(traffic)
    rs, ag = PHASES.index("attn_reduce_scatter"), PHASES.index("attn_all_gather")
    assert got[0, :, rs, SENT].tolist() == [16, 8]
    assert got[0, :, rs, RECV].tolist() == [8, 16]
    assert got[0, :, ag, SENT].tolist() == [8, 16]
    assert got[0, :, ag, RECV].tolist() == [16, 8]
    assert not got[:, :, [rs, ag], LOCAL].any()


def test_scaled_model_update_mixtral() -> None:
    """Scale 1/64 of Mixtral-8x7B: hidden 4096 -> 64, expert ffn 14336 -> 224, head_dim 128 -> 2,
    heads kept, no shared experts invented, `layers` MoE blocks."""
    update = scaled_model_update(get_model("Mixtral-8x7B"), 1 / 64, layers=2)
    assert update["hidden_size"] == 64
    assert update["expert_ffn_size"] == 224
    assert update["head_dim"] == 2
    assert update["num_layers"] == 2
    assert update["shared_expert_ffn_size"] == 0
    with pytest.raises(ConfigError, match="scale"):
        scaled_model_update(get_model("Mixtral-8x7B"), 2.0, layers=2)


def test_live_inputs_reject_too_many_layers() -> None:
    """Asking for more layers than the trace holds is one ConfigError naming --layers."""
    with pytest.raises(ConfigError, match="--layers 99"):
        live_inputs(model="mixtral-8x7b", trace="bundled:mixtral8x7b_humaneval_decode",
                    placement="EP2", backend="gloo", scale=1 / 64, layers=99)


def test_check_bytes_equal_passes_and_one_byte_is_reported() -> None:
    """A measurement equal to the traffic has no mismatch; one byte more on one rank's combine
    is reported once, with its layer, rank, phase, field and both values."""
    measurement, traffic = _synthetic()
    assert check_bytes(measurement, traffic) == []
    record = measurement["per_layer"][1]["ranks"][3]["phases"]["combine"]
    record["recv_bytes"] += 1
    mismatches = check_bytes(measurement, traffic)
    assert len(mismatches) == 1
    m = mismatches[0]
    assert (m.layer, m.rank, m.phase, m.field) == (1, 3, "combine", "recv_bytes")
    assert m.measured == m.predicted + 1
    assert "layer 1 rank 3 combine recv_bytes" in str(m)


def test_synthetic_measurement_covers_every_comm_phase() -> None:
    """TP2xEP2 exercises attention-TP ring, dispatch/combine and MoE-TP gather/scatter, so the
    check above is not vacuous for those phases."""
    measurement, _ = _synthetic()
    phases = measurement["totals"]["phases"]
    for name in ("attn_reduce_scatter", "dispatch", "moe_tp_gather", "moe_tp_scatter",
                 "combine", "attn_all_gather"):
        assert phases[name]["sent_bytes"] > 0, name
    assert phases["dispatch"]["sent_bytes"] == phases["combine"]["recv_bytes"]
    assert measurement["totals"]["a2a_bytes"] == 2 * phases["dispatch"]["sent_bytes"]


def test_compare_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`validate compare` exits 0 on equal bytes and 1 with the mismatch printed on a change."""
    measurement, _ = _synthetic()
    good = tmp_path / "good.json"
    good.write_text(json.dumps(measurement))
    args = _parser().parse_args(["validate", "compare", str(good), "--json",
                                 str(tmp_path / "c.json")])
    assert args.handler(args) == 0
    assert json.loads((tmp_path / "c.json").read_text())["bytes_match"] is True
    measurement["per_layer"][0]["ranks"][1]["phases"]["dispatch"]["sent_bytes"] -= 1
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(measurement))
    args = _parser().parse_args(["validate", "compare", str(bad)])
    assert args.handler(args) == 1
    out = capsys.readouterr().out
    assert "layer 0 rank 1 dispatch sent_bytes" in out
    assert "bytes_match: false" in out


def test_load_measurement_rejects_other_schema(tmp_path: Path) -> None:
    """A JSON that is not a moesim measurement is one ConfigError naming the schema."""
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"schema": "something-else", "schema_version": 1}))
    with pytest.raises(ConfigError, match="schema"):
        load_measurement(path)


def test_live_without_torch_says_how_to_install(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    """Without torch, `validate live` raises one ConfigError with the pip command."""
    real_find_spec = validate_cli.importlib.util.find_spec
    monkeypatch.setattr(validate_cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real_find_spec(name, *a))
    args = _parser().parse_args(["validate", "live", "--placement", "EP2", "-o",
                                 str(tmp_path / "m.json")])
    with pytest.raises(ConfigError, match=r"pip install 'moesim\[live\]'"):
        args.handler(args)
