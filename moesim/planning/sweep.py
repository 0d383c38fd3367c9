"""Sweep: a grid of scenarios, each point evaluated to one flat row of figures.

A grid is the product `models x traces x placements x batches x contexts x topologies` over
fixed Scenario fields. Every point becomes one row (inputs, `feasible` and `reason`, `ttft_s`,
`tpot_s`, `tokens_per_s`, `tokens_per_s_per_gpu`, `a2a_bytes`, imbalance, memory headroom and
`usd_per_million_tokens`); a point that cannot run (layout larger than the topology, experts not
divisible, out of memory) is a row with `feasible` false and the reason, never an abort.

Rows are keyed by a stable hash of the point's Scenario (`point_key`) and appended to the output
as they complete, so an interrupted sweep resumes where it stopped (`run_sweep`); a last row cut
short by the interruption is dropped and recomputed. Points run serially, in a local process pool
(the default) or on Ray; all three give identical rows. One sweep at a time writes an output
(`OUT.lock` beside it holds its pid); pool workers end with the sweep, even when it is killed.
Points travel to workers with absolute file paths, and a point whose input file a worker cannot
find is not a row: the sweep fails naming it, and a rerun computes it.

Economics (decode): `tokens_per_s = batch / tpot_s`; `usd_per_hour = gpu price x world`;
`usd_per_million_tokens = usd_per_hour / 3600 / tokens_per_s x 1e6`.

A grid whose `fixed` holds a `serve` block also serves that workload at every feasible point
(`moesim.planning.serving`) and fills the `served_*` columns (TTFT and TPOT p50/p90/p99,
throughput, goodput, preemptions, cost at the served throughput). A `serve` block without an
arrival process makes the grid a load sweep: each point runs a closed loop of `batch` clients
with prompts of `context` tokens (unless the block gives `isl`).
"""

from __future__ import annotations

import itertools
import math
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moesim.errors import ConfigError
from moesim.inputs.config import Scenario, ServeSpec, load_model_file, parse_model
from moesim.planning.sweep_point import (
    evaluate_point,
    missing_inputs,
    pareto_front,
    point_key,
    shown_inputs,
    with_absolute_inputs,
)
from moesim.planning.sweep_rows import (
    ROW_COLUMNS,
    RowLog,
    RowStore,
    SweepLock,
    format_cell,
    parse_row,
    read_rows,
    repair_log,
)

__all__ = [
    "Grid",
    "load_grid",
    "expand_grid",
    "point_key",
    "evaluate_point",
    "ROW_COLUMNS",
    "SWEPT_FIELDS",
    "format_cell",
    "parse_row",
    "read_rows",
    "Progress",
    "SweepSummary",
    "run_sweep",
    "pareto_front",
]

# Grid list field -> the Scenario field it sweeps, outermost first. Topology is innermost so
# consecutive points share one step's traffic (it does not depend on the topology).
SWEPT_FIELDS = {
    "models": "model",
    "traces": "trace",
    "placements": "placement",
    "batches": "batch",
    "contexts": "context",
    "topologies": "topology",
}


class Grid(BaseModel):
    """A sweep: lists of values per swept Scenario field, plus fixed Scenario fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "grid"
    description: str = ""
    models: list[str] = Field(default_factory=lambda: ["mixtral-8x7b"], min_length=1)
    traces: list[str] = Field(
        default_factory=lambda: ["bundled:mixtral8x7b_humaneval_decode"], min_length=1
    )
    placements: list[str | dict[str, int]] = Field(min_length=1)
    batches: list[int] = Field(min_length=1)
    contexts: list[int] = Field(min_length=1)
    topologies: list[str] = Field(min_length=1)
    fixed: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Grid:
        swept = set(SWEPT_FIELDS.values()) & set(self.fixed)
        if swept:
            raise ValueError(
                f"fixed sets {sorted(swept)}, which the grid sweeps; list them in the grid's "
                "own fields (models, traces, placements, batches, contexts, topologies)"
            )
        if min(self.batches) < 1 or min(self.contexts) < 1:
            raise ValueError("batches and contexts must be positive integers")
        return self

    @property
    def size(self) -> int:
        """Number of points in the grid."""
        return math.prod(len(getattr(self, name)) for name in SWEPT_FIELDS)


def load_grid(path: str | Path) -> Grid:
    """Read a grid YAML; relative model/trace/topology paths resolve against its folder."""
    path = Path(path)
    grid = load_model_file(Grid, path, "grid")
    parse_model(Scenario, dict(grid.fixed), f"grid file {path} field 'fixed'")
    updates = {
        name: [_resolve_path(value, path.parent) for value in getattr(grid, name)]
        for name in ("models", "traces", "topologies")
    }
    return grid.model_copy(update=updates)


def _resolve_path(value: str, folder: Path) -> str:
    """`value` joined to `folder` when it names a file there; presets pass through."""
    looks_like_file = "/" in value or Path(value).suffix in {".npz", ".yaml", ".yml", ".json"}
    if value.startswith("bundled:") or not looks_like_file:
        return value
    candidate = folder / value
    return str(candidate) if candidate.exists() else value  # made absolute when shipped


def expand_grid(grid: Grid, fidelity: str | None = None) -> list[Scenario]:
    """Every point of the grid as a Scenario, outermost field first (topology innermost)."""
    fixed = dict(grid.fixed)
    if fidelity is not None:
        fixed["fidelity"] = fidelity
    fixed.setdefault("name", grid.name)
    lists = [getattr(grid, name) for name in SWEPT_FIELDS]
    points: list[Scenario] = []
    for values in itertools.product(*lists):
        data = {**fixed, **dict(zip(SWEPT_FIELDS.values(), values, strict=True))}
        if data.get("serve") is not None:
            data["serve"] = _point_workload(data["serve"], data["batch"], data["context"])
        points.append(parse_model(Scenario, data, f"grid '{grid.name}' point {len(points)}"))
    return points


def _point_workload(serve: Any, batch: int, context: int) -> Any:
    """A point's served workload: the grid's, or without an arrival process a closed loop of
    `batch` clients with prompts of `context` tokens (unless it gives `isl`)."""
    data = serve.model_dump(exclude_unset=True) if isinstance(serve, ServeSpec) else serve
    if not isinstance(data, dict) or any(
            data.get(name) is not None for name in ("rate", "concurrency", "requests_file")):
        return serve
    return {"isl": context, **data, "concurrency": batch}


# ---- running --------------------------------------------------------------------------------

Evaluate = Callable[[Scenario], dict[str, Any]]
# (key, the point as shipped, its input cells as the grid wrote them where shipping changed them)
Chunk = list[tuple[str, Scenario, dict[str, Any]]]
# Key of a worker's answer for a point it could not compute (an input file it cannot find).
_MISSING = "missing"
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_PARENT_POLL_S = 0.5


@dataclass(frozen=True)
class SweepSummary:
    """What a sweep did: points in the grid, computed now, found done, feasible, wall time."""

    points: int
    computed: int
    resumed: int
    feasible: int
    remaining: int
    wall_s: float
    out: Path


class Progress:
    """A plain-text progress bar on stderr (redrawn in place on a terminal, else every 10%)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.done = total, 0
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty()
        self.start_s = self.last_s = time.perf_counter()
        self.last_decile = -1

    def update(self, count: int) -> None:
        """Count `count` more points done and redraw when due."""
        self.done += count
        now = time.perf_counter()
        decile = 10 * self.done // max(self.total, 1)
        due = now - self.last_s > 0.2 if self.tty else decile > self.last_decile
        if due or self.done == self.total:
            self.last_s, self.last_decile = now, decile
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed_s = now - self.start_s
        rate = self.done / elapsed_s if elapsed_s > 0 else 0.0
        eta_s = (self.total - self.done) / rate if rate > 0 else 0.0
        filled = 30 * self.done // max(self.total, 1)
        text = (
            f"[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} points "
            f"{rate:.1f}/s ETA {eta_s:.0f}s"
        )
        self.stream.write(("\r" + text) if self.tty else text + "\n")
        if self.tty and self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


def _evaluate_chunk(chunk: Chunk, evaluate: Evaluate) -> list[dict[str, str]]:
    """Rows of a chunk of points, as text (the form they take on disk); a point whose input
    file is not here is `{"key": key, _MISSING: why}`, never a row."""
    rows = []
    for key, scenario, shown in chunk:
        missing = missing_inputs(scenario)
        if missing:
            rows.append({"key": key, _MISSING: f"{'; '.join(missing)} on {socket.gethostname()}"})
            continue
        row = evaluate(scenario)
        row.update(shown)
        row["key"] = key
        rows.append({name: format_cell(row.get(name)) for name in ROW_COLUMNS})
    return rows


def _die_with_parent(parent_pid: int, direct: bool) -> None:
    """Pool worker initializer: end this worker when the sweep that started it dies (kill -9
    included) rather than leave it running. On Linux the kernel sends SIGKILL at the parent's
    death; everywhere a thread ends the worker once its parent changes. `direct`: the sweep is
    the worker's parent (fork, spawn; a forkserver is the parent otherwise, and dies with it)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass
    parent = os.getppid()
    if direct and parent != parent_pid:  # the sweep died before this worker started
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True,
                     name="moesim-parent-watch").start()


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(_PARENT_POLL_S)
    os._exit(1)


def _chunks(todo: Chunk, workers: int) -> list[Chunk]:
    """Contiguous chunks (neighbours share traffic), about four per worker, at most 32 points."""
    size = max(1, min(32, math.ceil(len(todo) / (4 * workers))))
    return [todo[i : i + size] for i in range(0, len(todo), size)]


def _pool_map(
    chunks: list[Chunk], evaluate: Evaluate, workers: int
) -> Iterator[list[dict[str, str]]]:
    if workers == 1:
        for chunk in chunks:
            yield _evaluate_chunk(chunk, evaluate)
        return
    context = multiprocessing.get_context()
    direct = context.get_start_method() != "forkserver"
    with ProcessPoolExecutor(max_workers=workers, mp_context=context,
                             initializer=_die_with_parent,
                             initargs=(os.getpid(), direct)) as pool:
        futures = [pool.submit(_evaluate_chunk, chunk, evaluate) for chunk in chunks]
        try:
            for future in as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()


def _ray_map(
    chunks: list[Chunk], evaluate: Evaluate, address: str, workers: int
) -> Iterator[list[dict[str, str]]]:
    try:
        import ray
    except ImportError:
        raise ConfigError("--ray needs Ray: pip install 'ray>=2.9'") from None
    started = not ray.is_initialized()
    if started and address == "local":
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    elif started:
        ray.init(address=address, log_to_driver=False)
    try:
        task = ray.remote(_evaluate_chunk)
        pending = [task.remote(chunk, evaluate) for chunk in chunks]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            yield ray.get(ready[0])
    finally:
        if started:
            ray.shutdown()


def run_sweep(
    points: list[Scenario],
    out: str | Path,
    *,
    workers: int | None = None,
    ray_address: str | None = None,
    max_points: int | None = None,
    progress: bool = True,
    evaluate: Evaluate = evaluate_point,
) -> SweepSummary:
    """Evaluate the points not already in `out`, appending rows as they finish; see module doc.

    `workers`: processes (default: all cores; 1 runs serially here). `ray_address`: run on Ray
    (`local` starts a local instance). `max_points`: stop after that many new points. Notes
    (a stale lock taken over, an unfinished row dropped) go to stderr. ConfigError when another
    sweep writes `out`, when an input file is missing, and after the run when a worker could
    not find one (the rows computed are kept).
    """
    started_s = time.perf_counter()
    store = RowStore(Path(out))
    lock = SweepLock(store.out)
    _note(lock.acquire())
    try:
        _note(repair_log(store.log_path))
        keys = [point_key(p) for p in points]
        done = {row["key"] for row in store.rows()}
        todo_by_key = {k: p for k, p in zip(keys, points, strict=True) if k not in done}
        todo = list(todo_by_key.items())[:max_points]
        _check_inputs(todo)
        workers = workers or os.cpu_count() or 1
        chunks = _chunks([_shipped(key, point) for key, point in todo], workers)
        if ray_address:
            results = _ray_map(chunks, evaluate, ray_address, workers)
        else:
            results = _pool_map(chunks, evaluate, workers)
        bar = Progress(len(todo)) if progress and todo else None
        log = RowLog(store.log_path)
        lost: list[str] = []
        try:
            for rows in results:
                lost += [row[_MISSING] for row in rows if _MISSING in row]
                log.append([row for row in rows if _MISSING not in row])
                if bar:
                    bar.update(len(rows))
        finally:
            log.close()
        store.finalize(keys)
        if lost:
            raise ConfigError(
                f"{len(lost)} points were not computed: {lost[0]}; every worker must reach the "
                f"input files (a shared file system); rerun to compute them ({store.out} keeps "
                "the rows done)")
        written = {row["key"]: row["feasible"] == "true" for row in store.rows()}
    finally:
        lock.release()
    unique = set(keys)
    return SweepSummary(
        points=len(points),
        computed=len(todo),
        resumed=len(unique & done),
        feasible=sum(written.get(k, False) for k in unique),
        remaining=len(unique - set(written)),
        wall_s=time.perf_counter() - started_s,
        out=Path(out),
    )


def _note(text: str | None) -> None:
    if text:
        print(f"note: {text}", file=sys.stderr)


def _check_inputs(todo: list[tuple[str, Scenario]]) -> None:
    """ConfigError before any work when a point names an input file that does not exist."""
    for key, point in todo:
        missing = missing_inputs(point)
        if missing:
            raise ConfigError(f"point {key} ({point.placement}, batch {point.batch}): "
                              f"{missing[0]}; fix the path in the grid (relative paths resolve "
                              "against the grid file's folder)")


def _shipped(key: str, point: Scenario) -> tuple[str, Scenario, dict[str, Any]]:
    """A chunk entry: the point with absolute file paths, and its cells as written where
    those changed (rows read the same whichever folder or host computed them)."""
    shipped = with_absolute_inputs(point)
    return key, shipped, ({} if shipped is point else shown_inputs(point))
