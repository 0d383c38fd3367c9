"""StepTimeline: when each operation of a step plan started and ended on each rank.

A backend fills `start_s[op, rank]` (the moment the rank was ready for the operation: its
dependencies done and its stream free) and `end_s[op, rank]` (when the rank's part ended; for a
collective or exchange, waiting for peers counts in it); NaN where the rank takes no part. The
per-phase and per-block figures every report uses are derived here, in one place:
- `phase_s[block, rank, phase]`: the seconds the rank spent in the phase's operations (with
  overlap, a rank may be in two phases at once, so phases can sum to more than the step);
- `block_end_s[block, rank]`: when the rank finished its last operation of the block;
- `lm_head_s[rank]`: the LM head's seconds; `step_s`: when the last rank finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from moesim.engine.plan import PHASES, StepPlan

__all__ = ["StepTimeline"]

_P = {name: i for i, name in enumerate(PHASES)}


@dataclass(frozen=True, eq=False)
class StepTimeline:
    """Start and end of every operation on every rank, and the figures derived from them."""

    plan: StepPlan
    start_s: np.ndarray  # [ops, W] when the rank was ready for the op (NaN: not its op)
    end_s: np.ndarray  # [ops, W] when the rank's part of the op ended
    fidelity: str
    events: int = 0  # flows the network started (des), for benchmarks

    @property
    def num_dense_blocks(self) -> int:
        """Leading dense blocks of the plan."""
        return self.plan.num_dense_blocks

    @cached_property
    def _durations_s(self) -> np.ndarray:
        """`[ops, W]` each rank's seconds in each operation (0 where it takes no part)."""
        return np.where(self.plan.layout.ranks, self.end_s - self.start_s, 0.0)

    @cached_property
    def phase_s(self) -> np.ndarray:
        """`[blocks, W, phases]` seconds each rank spent in each phase of each block."""
        out = np.zeros((self.plan.num_blocks, self.plan.world, len(PHASES)))
        layout = self.plan.layout
        booked = np.flatnonzero(layout.phase >= 0)
        # summed in plan order, as one operation after another
        np.add.at(out.transpose(0, 2, 1), (layout.block[booked], layout.phase[booked]),
                  self._durations_s[booked])
        return out

    @cached_property
    def block_end_s(self) -> np.ndarray:
        """`[blocks, W]` when each rank finished its last operation of each block."""
        out = np.zeros((self.plan.num_blocks, self.plan.world))
        layout = self.plan.layout
        inside = np.flatnonzero(layout.block < self.plan.num_blocks)
        ends = np.where(layout.ranks[inside], self.end_s[inside], -np.inf)
        np.maximum.at(out, layout.block[inside], ends)
        return out

    @cached_property
    def lm_head_s(self) -> np.ndarray:
        """`[W]` seconds of the LM head on each rank."""
        out = np.zeros(self.plan.world)
        for index in np.flatnonzero(self.plan.layout.lm_head):
            out += self._durations_s[index]
        return out

    @cached_property
    def rank_end_s(self) -> np.ndarray:
        """`[W]` when each rank finished its last operation."""
        ends = np.where(np.isnan(self.end_s), -np.inf, self.end_s)
        return np.maximum(ends.max(axis=0, initial=-np.inf), 0.0)

    @property
    def step_s(self) -> float:
        """The step: until the last rank finished."""
        return float(self.rank_end_s.max(initial=0.0))

    @property
    def critical_rank(self) -> int:
        """The rank that finishes the step last."""
        return int(np.argmax(self.rank_end_s))

    def phase_totals_s(self) -> dict[str, float]:
        """Critical rank's seconds per phase over all blocks (without overlap these and the LM
        head sum to the step)."""
        rank = self.critical_rank
        return {name: float(self.phase_s[:, rank, i].sum()) for i, name in enumerate(PHASES)}

    def per_layer(self) -> list[dict[str, Any]]:
        """Per block: the slowest rank's time per phase, and the block's duration."""
        ends = self.block_end_s
        starts = np.concatenate((np.zeros((1, ends.shape[1])), ends[:-1]))
        block_s = (ends - starts).max(axis=1).tolist()
        phase_max_s = self.phase_s.max(axis=1).tolist()  # [blocks][phases]
        return [
            {
                "block": block,
                "moe": block >= self.num_dense_blocks,
                "time_s": block_s[block],
                "phase_max_s": dict(zip(PHASES, phase_max_s[block], strict=True)),
            }
            for block in range(ends.shape[0])
        ]

    def op_seconds(self, name: str) -> np.ndarray:
        """`[blocks, W]` seconds of the operations called `name` (0 where none ran)."""
        out = np.zeros((self.plan.num_blocks + 1, self.plan.world))
        duration = np.nan_to_num(self.end_s - self.start_s)
        named = [index for index, op in enumerate(self.plan.ops) if op.name == name]
        np.add.at(out, self.plan.layout.block[named], duration[named])
        return out[: self.plan.num_blocks]

    def gantt(self) -> dict[str, Any]:
        """JSON-ready bars of every operation: block, phase, stream, start and end per rank."""
        ops = self.plan.ops
        return {
            "fidelity": self.fidelity,
            "step_s": self.step_s,
            "world": self.plan.world,
            "num_dense_blocks": self.num_dense_blocks,
            "ops": [{"name": op.name, "phase": op.phase, "block": op.block, "stream": op.stream}
                    for op in ops],
            "start_s": np.round(np.nan_to_num(self.start_s, nan=-1.0), 12).tolist(),
            "end_s": np.round(np.nan_to_num(self.end_s, nan=-1.0), 12).tolist(),
        }
