"""Live validation of EPLB placements: a gloo run of a DeepSeek-EPLB placement with redundant
expert slots moves exactly the predicted bytes, and the MoE engines the harness cannot replay
(an all-to-all other than direct, two-batch overlap, MTP) are refused with one error line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from moesim.cli import main
from moesim.errors import ConfigError
from moesim.planning.evaluate import step_traffic
from moesim.planning.resolve import RunInputs, resolve_inputs
from moesim.traffic.traffic import Traffic
from moesim.traffic.workload import build_step
from validate.launch import rank_plans
from validate.measurement import (
    PHASES,
    check_bytes,
    expected_bytes,
    live_inputs,
    measurement_scenario,
    traffic_for_inputs,
)

TRACE = "bundled:mixtral8x7b_humaneval_decode"
SMALL = {"model": "mixtral-8x7b", "trace": TRACE, "scale": 1 / 64, "layers": 2, "tokens": 48}
EPLB = {"eplb": "deepseek", "redundant_experts": 4}


def _eplb_traffic(inputs: dict) -> tuple[RunInputs, Traffic]:
    """The EPLB scenario's inputs and traffic (balanced now, not read back from the record)."""
    run = resolve_inputs(measurement_scenario({**inputs, "expert_placement": None}, **EPLB))
    return run, step_traffic(run, build_step(run.trace, run.scenario.phase))


def test_eplb_placement_is_recorded_inline_and_rebuilds_the_same_traffic() -> None:
    """`live_inputs` balances on the run's trace slice and records the placement (copy choice
    local_first) and how it was made; the traffic rebuilt from that record is the EPLB
    scenario's: the same bytes in every phase and the same tokens per expert on every rank."""
    inputs = live_inputs(placement="EP4", backend="gloo", **SMALL, **EPLB)
    assert inputs["eplb"] == {"policy": "deepseek", "redundant_experts": 4, "window_tokens": 48}
    assert inputs["expert_placement"]["copy_choice"] == "local_first"
    run, balanced = _eplb_traffic(inputs)
    assert run.experts.has_replicas and run.experts.slots == (8 + 4) // 4
    recorded = traffic_for_inputs(inputs)
    assert np.array_equal(expected_bytes(recorded), expected_bytes(balanced))
    for layer in range(2):
        for rank in range(4):
            assert (sorted(recorded.rank_expert_tokens[layer, rank].tolist())
                    == sorted(balanced.rank_expert_tokens[layer, rank].tolist()))
    plans = rank_plans(recorded, inputs, {})  # each rank's GEMMs: one per slot, its tokens
    hidden = recorded.hidden_bytes
    for rank, plan in enumerate(plans):
        assert np.array_equal(plan["expert_tokens"], recorded.rank_expert_tokens[:, rank])
        assert np.array_equal(plan["dispatch_send_rows"] * hidden,
                              recorded.dispatch_bytes[:, rank, :])


def test_eplb_flags_are_checked_by_name() -> None:
    """R without a policy, and a policy beside a placement file, are one error naming the flag."""
    with pytest.raises(ConfigError, match="--redundant-experts needs a balancing policy"):
        live_inputs(placement="EP4", backend="gloo", redundant_experts=4, **SMALL)
    with pytest.raises(ConfigError, match="--eplb .* or --expert-placement"):
        live_inputs(placement="EP4", backend="gloo", expert_placement="x.yaml", **SMALL, **EPLB)


@pytest.mark.parametrize(("flags", "named"), [
    (["--a2a", "allgather"], "--a2a allgather"),
    (["--a2a", "deepep-ll"], "--a2a deepep-ll"),
    (["--overlap", "tbo"], "--overlap tbo"),
    (["--mtp", "2"], "--mtp 2"),
    (["--dispatch-dtype", "fp8"], "--dispatch-dtype fp8"),
])
def test_live_refuses_engines_it_cannot_replay(flags: list[str], named: str, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`validate live` with an engine other than direct all-to-all exits 2 with one
    `moesim: error:` line naming the flag; nothing runs and nothing is written."""
    out = tmp_path / "m.json"
    code = main(["validate", "live", "--placement", "EP4", "--nproc", "4", *flags,
                 "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert err.count("\n") == 1 and err.startswith(f"moesim: error: {named}: ")
    assert "the live harness replays direct all-to-all only" in err


@pytest.mark.live
def test_eplb_with_redundant_experts_moves_the_predicted_bytes_live(tmp_path: Path) -> None:
    """EP4 on 4 gloo ranks, DeepSeek EPLB with 4 redundant slots (3 per rank, some experts on
    two or three ranks): every rank's dispatch, combine and expert phases move exactly the
    predicted bytes on every layer, and the dispatch differs from the contiguous placement's."""
    pytest.importorskip("torch")
    from validate.launch import run_live

    measurement = run_live(placement="EP4", nproc=4, warmup=0, repeats=1, timeout_s=60.0,
                           workdir=tmp_path, **SMALL, **EPLB)
    inputs = measurement["inputs"]
    traffic = traffic_for_inputs(inputs)
    assert traffic.experts.has_replicas and traffic.experts.copies.max() > 1
    assert traffic.rank_expert_tokens.shape == (2, 4, 3)
    assert check_bytes(measurement, traffic) == []
    predicted = expected_bytes(traffic)
    for phase in ("dispatch", "combine"):
        assert predicted[:, :, PHASES.index(phase), 0].sum() > 0, phase
    contiguous = traffic_for_inputs({**inputs, "expert_placement": None})
    assert not np.array_equal(traffic.dispatch_bytes, contiguous.dispatch_bytes)
    _, balanced = _eplb_traffic(inputs)  # the recorded placement is the EPLB one
    assert np.array_equal(predicted, expected_bytes(balanced))
    assert not list(tmp_path.iterdir())  # plan files are removed after a good run
