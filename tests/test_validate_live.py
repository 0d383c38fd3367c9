"""Live harness on gloo (CPU processes over loopback): measured bytes equal the prediction exactly,
and a failing or hanging rank ends the run with one clear error and no process left behind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from validate.launch import LiveRunError, run_live
from validate.measurement import PHASES, check_bytes, expected_bytes, traffic_for_inputs

pytest.importorskip("torch")  # validate.launch imports torch only when a run starts
pytestmark = pytest.mark.live

TRACE = "bundled:mixtral8x7b_humaneval_decode"
SMALL = {"model": "mixtral-8x7b", "trace": TRACE, "scale": 1 / 64, "layers": 2, "tokens": 48,
         "warmup": 0, "repeats": 1, "timeout_s": 60.0}


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains `text` (Linux /proc)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize(
    ("placement", "extra", "comm_phases"),
    [
        ("EP2", {}, ("dispatch", "combine")),
        ("EP4", {}, ("dispatch", "combine")),
        ("EP2xDP2", {}, ("dispatch", "combine")),
        ("TP4", {}, ("attn_reduce_scatter", "moe_tp_gather", "moe_tp_scatter", "attn_all_gather")),
        ("SP4", {"phase": "decode"}, ("sp_exchange", "dispatch", "combine")),
    ],
)
def test_live_bytes_match_prediction_exactly(placement: str, extra: dict, comm_phases: tuple,
                                             tmp_path: Path) -> None:
    """Every rank's sent/received/local bytes per layer and phase, counted from the split sizes
    handed to torch, equal the simulator's Traffic for the recorded (scaled) inputs."""
    measurement = run_live(placement=placement, workdir=tmp_path, **SMALL, **extra)
    traffic = traffic_for_inputs(measurement["inputs"])
    assert check_bytes(measurement, traffic) == []
    assert measurement["inputs"]["hidden_size"] == 64  # 4096 / 64
    predicted = expected_bytes(traffic)
    for phase in comm_phases:  # the phases this layout exercises really moved bytes
        assert predicted[:, :, PHASES.index(phase), 0].sum() > 0, phase
    times = np.array([[[r["phases"][p]["time_s"] for p in PHASES] for r in layer["ranks"]]
                      for layer in measurement["per_layer"]])
    assert times.shape == (2, traffic.world, len(PHASES))
    assert (times >= 0).all() and times[:, :, PHASES.index("experts")].min() > 0
    assert not list(tmp_path.iterdir())  # plan files are removed after a good run


def test_replicated_experts_move_the_predicted_bytes_live(tmp_path: Path) -> None:
    """EP2 with experts 0 and 7 on both ranks (round robin between the copies): the live run's
    dispatch and combine bytes equal the simulator's on every layer and rank, each rank runs
    its 5 expert slots, and the measurement records the placement inline so `validate
    compare` rebuilds the same traffic."""
    path = tmp_path / "replicas.yaml"
    path.write_text("ep_ranks: [[0, 1, 2, 3, 7], [4, 5, 6, 7, 0]]\ncopy_choice: round_robin\n")
    measurement = run_live(placement="EP2", workdir=tmp_path / "run", expert_placement=str(path),
                           **SMALL)
    assert measurement["inputs"]["expert_placement"] == {
        "ep_ranks": [[0, 1, 2, 3, 7], [4, 5, 6, 7, 0]], "copy_choice": "round_robin"}
    traffic = traffic_for_inputs(measurement["inputs"])
    assert traffic.experts.has_replicas and traffic.rank_expert_tokens.shape[2] == 5
    assert check_bytes(measurement, traffic) == []
    default = traffic_for_inputs({**measurement["inputs"], "expert_placement": None})
    assert not np.array_equal(traffic.dispatch_bytes, default.dispatch_bytes)


def test_failing_rank_gives_one_error_and_no_orphans(tmp_path: Path) -> None:
    """A rank that raises ends the run with LiveRunError naming that rank and its error, and
    every rank process is gone when run_live returns."""
    with pytest.raises(LiveRunError, match=r"rank 1 failed: RuntimeError: injected failure"):
        run_live(placement="EP2", workdir=tmp_path, inject_failure=(1, "raise"), **SMALL)
    assert _processes_mentioning(str(tmp_path)) == []


def test_hanging_rank_hits_timeout_and_no_orphans(tmp_path: Path) -> None:
    """A rank that hangs ends the run at --timeout-s with LiveRunError; nothing is left running."""
    settings = {**SMALL, "timeout_s": 6.0}
    with pytest.raises(LiveRunError, match=r"exceeded --timeout-s 6"):
        run_live(placement="EP2", workdir=tmp_path, inject_failure=(0, "hang"), **settings)
    assert _processes_mentioning(str(tmp_path)) == []


def test_per_layer_barrier_moves_the_same_bytes(tmp_path: Path) -> None:
    """`barrier="layer"` (each layer timed in isolation) runs the same collectives as the
    default once-per-pass barrier: bytes still match, and the choice is recorded."""
    measurement = run_live(placement="EP2", workdir=tmp_path, barrier="layer", **SMALL)
    assert check_bytes(measurement, traffic_for_inputs(measurement["inputs"])) == []
    assert measurement["inputs"]["barrier"] == "layer"


def test_harness_phase_order_is_the_measurement_order() -> None:
    """The rank worker (which imports no moesim) indexes `exchange[L, P]` in PHASES order."""
    from validate.harness import PHASE_INDEX

    assert list(PHASE_INDEX) == list(PHASES)


def test_all_local_exchange_copies_own_rows_without_a_collective() -> None:
    """With `exchange=False` (no process group needed) rank 1 of 3 copies its own send rows
    (rows 2..4 of the input: rank 0 gets 2 rows first) to its own receive slot (rows 1..3 of
    the output: 1 row from rank 0 first) and reports only local bytes (3 rows of 4 fp32)."""
    import torch

    from validate.harness import _all_to_all

    inp = torch.arange(24, dtype=torch.float32).reshape(6, 4)
    out = torch.zeros(6, 4)
    sent, received, local = _all_to_all(out, inp, recv_rows=np.array([1, 3, 0]),
                                        send_rows=np.array([2, 3, 1]), rank=1, exchange=False)
    assert torch.equal(out[1:4], inp[2:5]) and not out[[0, 4, 5]].any()
    assert (sent, received, local) == (3 * 16, 1 * 16, 3 * 16)
