"""Sweep: a grid of scenarios, each point evaluated to one flat row of figures.

A grid is the product `models x traces x placements x batches x contexts x topologies` over
fixed Scenario fields. Every point becomes one row (inputs, `feasible` and `reason`, `ttft_s`,
`tpot_s`, `tokens_per_s`, `tokens_per_s_per_gpu`, `a2a_bytes`, imbalance, memory headroom and
`usd_per_million_tokens`); a point that cannot run (layout larger than the topology, experts not
divisible, out of memory) is a row with `feasible` false and the reason, never an abort.

Rows are keyed by a stable hash of the point's Scenario (`point_key`) and appended to the output
as they complete, so an interrupted sweep resumes where it stopped (`run_sweep`). Points run
serially, in a local process pool (the default) or on Ray; all three give identical rows.

Economics (decode): `tokens_per_s = batch / tpot_s`; `usd_per_hour = gpu price x world`;
`usd_per_million_tokens = usd_per_hour / 3600 / tokens_per_s x 1e6`.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import BaseModel, ConfigDict, Field, model_validator

from moesim.config import Scenario, load_model_file, parse_model
from moesim.errors import ConfigError, MoesimError, PlacementError
from moesim.memory import MemoryFit, memory_fit
from moesim.placement import Parallelism, check_fits_model, check_tp_fits_model
from moesim.result import layer_imbalance
from moesim.simulate import (
    WEIGHT_DTYPE_BYTES,
    RunInputs,
    resolve_placement,
    resolve_trace,
)
from moesim.traffic import ACT_DTYPE_BYTES, Traffic, compute_traffic
from moesim.workload import StepWorkload, build_step

if TYPE_CHECKING:
    from moesim.topology import Topology

__all__ = [
    "Grid",
    "load_grid",
    "expand_grid",
    "point_key",
    "PointMetrics",
    "run_point",
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

ROW_COLUMNS = (
    "key",
    "model",
    "trace",
    "topology",
    "placement",
    "world",
    "batch",
    "context",
    "phase",
    "fidelity",
    "act_dtype",
    "weight_dtype",
    "dedup",
    "sp_variant",
    "feasible",
    "reason",
    "ttft_s",
    "tpot_s",
    "tokens_per_s",
    "tokens_per_s_per_gpu",
    "a2a_bytes",
    "expert_imbalance_max",
    "rank_imbalance_max",
    "memory_total_bytes",
    "memory_headroom_bytes",
    "gpu_price_per_hour_usd",
    "usd_per_hour",
    "usd_per_million_tokens",
)


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
    return str(candidate) if candidate.exists() else value


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
        points.append(parse_model(Scenario, data, f"grid '{grid.name}' point {len(points)}"))
    return points


def point_key(scenario: Scenario) -> str:
    """Stable 16-hex-digit hash of what a point computes (its name and description excluded)."""
    fields = scenario.model_dump(exclude={"name", "description"})
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---- cached inputs (per worker process) -----------------------------------------------------


@functools.cache
def _model(spec: str):  # type: ignore[no-untyped-def]
    from moesim.models import load_model

    return load_model(spec)


@functools.lru_cache(maxsize=8)
def _trace(spec: str):  # type: ignore[no-untyped-def]
    return resolve_trace(spec)


@functools.cache
def _topology(spec: str) -> Topology:
    from moesim.topology import load_topology

    return load_topology(spec)


@functools.cache
def _routes(topology: str, world: int):  # type: ignore[no-untyped-def]
    from moesim.engine.routes import build_route_table

    return build_route_table(_topology(topology), world)


@functools.cache
def _placement(spec_json: str) -> Parallelism:
    return resolve_placement(json.loads(spec_json))


@functools.lru_cache(maxsize=4)
def _step(trace: str, phase: str, batch: int | None, context: int | None) -> StepWorkload:
    # a prefill step holds batch x context tokens, so only the current point's are kept
    return build_step(_trace(trace)[0], phase, batch, context)


@functools.lru_cache(maxsize=64)
def _traffic(key: tuple[Any, ...], phase: str, gpus_per_node: int) -> Traffic:
    model, trace, placement, batch, context, act_dtype, dedup, sp_variant = key
    return compute_traffic(
        _step(trace, phase, batch, context).trace,
        _model(model),
        _placement(placement),
        act_dtype=act_dtype,
        dedup=dedup,
        gpus_per_node=gpus_per_node,
        phase=phase,
        sp_variant=sp_variant,
    )


def _step_traffic(inputs: RunInputs, phase: str) -> tuple[StepWorkload, Traffic]:
    """The scenario's `phase` step and its traffic, shared by points differing only in topology."""
    sc = inputs.scenario
    placement = json.dumps(sc.placement, sort_keys=True)
    key = (sc.model, sc.trace, placement, sc.batch, sc.context, sc.act_dtype, sc.dedup,
           sc.sp_variant)  # fmt: skip
    traffic = _traffic(key, phase, inputs.gpus_per_node)
    return _step(sc.trace, phase, sc.batch, sc.context), traffic


def _topo(inputs: RunInputs) -> Topology:
    """The point's topology (`_inputs` always loads one)."""
    if inputs.topology is None:  # pragma: no cover - _inputs raises first
        raise PlacementError("a sweep point needs a topology")
    return inputs.topology


def _inputs(sc: Scenario) -> RunInputs:
    """`simulate.resolve_inputs` from the per-process caches (a topology is required)."""
    if sc.topology is None:
        raise PlacementError("a sweep point needs a topology; list some under 'topologies'")
    par = _placement(json.dumps(sc.placement, sort_keys=True))
    topology = _topology(sc.topology)
    if topology.num_gpus < par.world:
        raise PlacementError(
            f"placement {par.label} needs {par.world} GPUs but topology {sc.topology} has "
            f"{topology.num_gpus}; pick a smaller layout or a larger topology"
        )
    trace, source = _trace(sc.trace)
    gpus_per_node = min(topology.gpus_per_node, par.world)
    return RunInputs(sc, _model(sc.model), trace, source, par, topology, gpus_per_node)


# ---- one point ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PointMetrics:
    """The figures of one point; `ttft_s` is None when the prefill was not timed."""

    ttft_s: float | None
    tpot_s: float
    tokens_per_s: float
    a2a_bytes: int
    expert_imbalance_max: float
    rank_imbalance_max: float


def _timed_step_s(inputs: RunInputs, phase: str) -> tuple[float, StepWorkload, Traffic]:
    """Seconds of one `phase` step, with its workload and traffic."""
    from moesim.engine.plan import build_step_plan
    from moesim.engine.step import simulate_step

    sc = inputs.scenario
    step, traffic = _step_traffic(inputs, phase)
    plan = build_step_plan(
        step,
        traffic,
        inputs.model,
        _topo(inputs).gpu_spec,
        act_dtype=sc.act_dtype,
        weight_bytes=WEIGHT_DTYPE_BYTES[sc.weight_dtype],
    )
    timeline = simulate_step(
        plan, _topo(inputs), sc.fidelity, routes=_routes(sc.topology, inputs.parallelism.world)
    )
    return timeline.step_s, step, traffic


def run_point(scenario: Scenario, *, with_ttft: bool = True) -> PointMetrics:
    """The figures `simulate.run_scenario` reports, from cached inputs (a topology is required).

    `ttft_s` is the prefill step, `tpot_s` the decode step, `tokens_per_s` decode sequences per
    `tpot_s`; `a2a_bytes` and imbalance are those of the scenario's own phase.
    """
    inputs = _inputs(scenario)
    tpot_s, decode, traffic = _timed_step_s(inputs, "decode")
    ttft_s = _timed_step_s(inputs, "prefill")[0] if with_ttft else None
    if scenario.phase == "prefill":
        traffic = _step_traffic(inputs, "prefill")[1]
    imbalance = layer_imbalance(traffic)
    return PointMetrics(
        ttft_s=ttft_s,
        tpot_s=tpot_s,
        tokens_per_s=decode.num_sequences / tpot_s,
        a2a_bytes=int(2 * traffic.dispatch_cross_bytes().sum()),
        expert_imbalance_max=float(imbalance.expert_max_over_mean.max()),
        rank_imbalance_max=float(imbalance.rank_max_over_mean.max()),
    )


def _memory_fit(inputs: RunInputs) -> MemoryFit:
    """Per-rank memory of the point: `batch` sequences at `context` (KV in the act dtype)."""
    sc = inputs.scenario
    act_bytes = ACT_DTYPE_BYTES[sc.act_dtype]
    return memory_fit(
        inputs.model,
        inputs.parallelism,
        _topo(inputs).gpu_spec.memory_bytes,
        batch=sc.batch or 1,
        context=sc.context or 1,
        weight_bytes=WEIGHT_DTYPE_BYTES[sc.weight_dtype],
        act_bytes=act_bytes,
        kv_bytes=act_bytes,
    )


def _input_row(sc: Scenario) -> dict[str, Any]:
    return {
        "key": point_key(sc),
        "model": sc.model,
        "trace": sc.trace,
        "topology": sc.topology,
        "placement": sc.placement if isinstance(sc.placement, str) else json.dumps(sc.placement),
        "batch": sc.batch,
        "context": sc.context,
        "phase": sc.phase,
        "fidelity": sc.fidelity,
        "act_dtype": sc.act_dtype,
        "weight_dtype": sc.weight_dtype,
        "dedup": sc.dedup,
        "sp_variant": sc.sp_variant,
    }


def evaluate_point(scenario: Scenario, *, with_ttft: bool = True) -> dict[str, Any]:
    """One row (keys `ROW_COLUMNS`, missing figures None); a MoesimError makes it infeasible."""
    row: dict[str, Any] = dict.fromkeys(ROW_COLUMNS)
    row.update(_input_row(scenario))
    row["feasible"] = False
    try:
        row["world"] = _placement(json.dumps(scenario.placement, sort_keys=True)).world
        inputs = _inputs(scenario)
        price = _topo(inputs).spec.gpu_price_per_hour_usd
        row["gpu_price_per_hour_usd"] = price
        par, model = inputs.parallelism, inputs.model
        check_fits_model(par, model.num_experts)
        check_tp_fits_model(par, model.num_attention_heads, model.expert_ffn_size)
        fit = _memory_fit(inputs)
        row["memory_total_bytes"] = fit.total_bytes
        row["memory_headroom_bytes"] = fit.headroom_bytes
        if not fit.fits:
            row["reason"] = f"out of memory: {fit.reason}"
            return row
        metrics = run_point(scenario, with_ttft=with_ttft)
    except MoesimError as exc:
        row["reason"] = str(exc)
        return row
    row.update(
        feasible=True,
        reason="",
        ttft_s=metrics.ttft_s,
        tpot_s=metrics.tpot_s,
        tokens_per_s=metrics.tokens_per_s,
        tokens_per_s_per_gpu=metrics.tokens_per_s / par.world,
        a2a_bytes=metrics.a2a_bytes,
        expert_imbalance_max=metrics.expert_imbalance_max,
        rank_imbalance_max=metrics.rank_imbalance_max,
    )
    if price is not None:
        row["usd_per_hour"] = price * par.world
        row["usd_per_million_tokens"] = row["usd_per_hour"] / 3600 / metrics.tokens_per_s * 1e6
    return row


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Feasible typed rows no other beats on both lower `tpot_s` and higher throughput per GPU."""
    timed = [r for r in rows if r.get("feasible") and r.get("tpot_s") is not None]
    timed.sort(key=lambda r: (r["tpot_s"], -r["tokens_per_s_per_gpu"]))
    front, best = [], -math.inf
    for row in timed:
        if row["tokens_per_s_per_gpu"] > best:
            front.append(row)
            best = row["tokens_per_s_per_gpu"]
    return front


# ---- rows on disk ---------------------------------------------------------------------------

_INT_COLUMNS = frozenset(
    {"world", "batch", "context", "a2a_bytes", "memory_total_bytes", "memory_headroom_bytes"}
)
_FLOAT_COLUMNS = frozenset(
    {
        "ttft_s",
        "tpot_s",
        "tokens_per_s",
        "tokens_per_s_per_gpu",
        "expert_imbalance_max",
        "rank_imbalance_max",
        "gpu_price_per_hour_usd",
        "usd_per_hour",
        "usd_per_million_tokens",
    }
)


def format_cell(value: Any) -> str:
    """A row value as CSV text: None empty, booleans true/false, floats round-tripping."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_row(row: dict[str, str]) -> dict[str, Any]:
    """A CSV row back to typed values (empty cells become None)."""
    typed: dict[str, Any] = {}
    for name, text in row.items():
        if text is None or text == "":
            typed[name] = None
        elif name == "feasible":
            typed[name] = text == "true"
        elif name in _INT_COLUMNS:
            typed[name] = int(text)
        elif name in _FLOAT_COLUMNS:
            typed[name] = float(text)
        else:
            typed[name] = text
    return typed


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """Complete rows of a sweep CSV or parquet file, as text; [] when it does not exist."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return []
    if path.suffix == ".parquet":
        table = _pyarrow_parquet().read_table(path).to_pylist()
        return [{name: format_cell(row.get(name)) for name in ROW_COLUMNS} for row in table]
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is not None and tuple(reader.fieldnames) != ROW_COLUMNS:
            raise ConfigError(
                f"{path} holds rows with other columns than a moesim sweep writes; "
                "give a new output file or delete this one"
            )
        # a row cut short by an interruption has None cells: it is recomputed
        return [row for row in reader if None not in row.values() and row.get("key")]


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "writing or reading .parquet needs pyarrow (pip install pyarrow); "
            "or give an output ending in .csv"
        ) from None
    return pq


class _RowLog:
    """Append-only CSV: the header once, then one flushed line per completed row."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.is_file() or path.stat().st_size == 0
        if not fresh and not path.read_bytes().endswith(b"\n"):
            with path.open("a", encoding="utf-8") as handle:
                handle.write("\n")  # end a line cut short by an interruption
        self.handle = path.open("a", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=ROW_COLUMNS)
        if fresh:
            self.writer.writeheader()

    def append(self, rows: list[dict[str, str]]) -> None:
        """Write rows and flush them to disk."""
        self.writer.writerows(rows)
        self.handle.flush()

    def close(self) -> None:
        """Close the file."""
        self.handle.close()


class _Store:
    """Where rows live: OUT.csv itself, or OUT.parquet plus a CSV journal beside it."""

    def __init__(self, out: Path) -> None:
        if out.suffix not in (".csv", ".parquet"):
            raise ConfigError(f"output {out} must end in .csv or .parquet")
        self.out = out
        self.parquet = out.suffix == ".parquet"
        if self.parquet:
            _pyarrow_parquet()
        self.log_path = Path(f"{out}.partial.csv") if self.parquet else out

    def rows(self) -> list[dict[str, str]]:
        """Rows already on disk, first occurrence of each key."""
        rows = read_rows(self.out) if self.parquet else []
        rows += read_rows(self.log_path)
        unique: dict[str, dict[str, str]] = {}
        for row in rows:
            unique.setdefault(row["key"], row)
        return list(unique.values())

    def finalize(self, keys: list[str]) -> None:
        """Rewrite the output in grid order (rows of other grids kept after them)."""
        rows = self.rows()
        order = {key: i for i, key in enumerate(keys)}
        rows.sort(key=lambda row: order.get(row["key"], len(order)))
        if self.parquet:
            typed = [parse_row(row) for row in rows]
            table = _pyarrow_table(typed)
            _pyarrow_parquet().write_table(table, self.out)
            self.log_path.unlink(missing_ok=True)
            return
        tmp = self.out.with_name(self.out.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=ROW_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.out)


def _pyarrow_table(rows: list[dict[str, Any]]) -> Any:
    import pyarrow as pa

    def kind(name: str) -> Any:
        if name == "feasible":
            return pa.bool_()
        if name in _INT_COLUMNS:
            return pa.int64()
        return pa.float64() if name in _FLOAT_COLUMNS else pa.string()

    schema = pa.schema([(name, kind(name)) for name in ROW_COLUMNS])
    return pa.Table.from_pylist(rows, schema=schema)


# ---- running --------------------------------------------------------------------------------

Evaluate = Callable[[Scenario], dict[str, Any]]
Chunk = list[tuple[str, Scenario]]


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
    """Rows of a chunk of points, as text (the form they take on disk)."""
    rows = []
    for key, scenario in chunk:
        row = evaluate(scenario)
        row["key"] = key
        rows.append({name: format_cell(row.get(name)) for name in ROW_COLUMNS})
    return rows


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
    with ProcessPoolExecutor(max_workers=workers) as pool:
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
    (`local` starts a local instance). `max_points`: stop after that many new points.
    """
    started_s = time.perf_counter()
    store = _Store(Path(out))
    keys = [point_key(p) for p in points]
    done = {row["key"] for row in store.rows()}
    todo_by_key = {k: p for k, p in zip(keys, points, strict=True) if k not in done}
    todo = list(todo_by_key.items())[:max_points]
    workers = workers or os.cpu_count() or 1
    chunks = _chunks(todo, workers)
    if ray_address:
        results = _ray_map(chunks, evaluate, ray_address, workers)
    else:
        results = _pool_map(chunks, evaluate, workers)
    bar = Progress(len(todo)) if progress and todo else None
    log = _RowLog(store.log_path)
    try:
        for rows in results:
            log.append(rows)
            if bar:
                bar.update(len(rows))
    finally:
        log.close()
    store.finalize(keys)
    written = {row["key"]: row["feasible"] == "true" for row in store.rows()}
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
