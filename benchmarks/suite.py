"""moesim's speed at every scale, as one table: case, fidelity, wall (min and median), CPU, peak
RSS and work per second; README's speed table is generated from its output, never hand-edited.

Each case runs in a fresh child process (`--repeat` times): its wall time is the timed section
the case names (the whole process for command-line cases, which also record the time to their
first line of output), its CPU time and peak resident memory come from the child's rusage
(`os.wait4`), so every figure is that case's own. Work per second divides the case's work
(flow parts, requests, sweep points, estimates) by the fastest wall time.

    python benchmarks/suite.py                     # every default case, 3 runs each
    python benchmarks/suite.py --cases step-ep64-des,serve-10k --repeat 5
    python benchmarks/suite.py --large             # also the 256-GPU DES step (minutes)
    python benchmarks/suite.py --json benchmarks/speed.json --readme README.md
    python benchmarks/suite.py --code /tmp/old-checkout --json before.json   # an older tree
    python benchmarks/suite.py --cases cli-run --json benchmarks/speed.json --update

`--code DIR` runs the cases against another checkout's `moesim` (PYTHONPATH=DIR), to measure
"before" on the same host. `--before JSON` adds that run's median as a column.

The peer planner (NVIDIA's aiconfigurator) is compared when it is installed: `--peer-python`
names a Python that imports it (default: the interpreter of an `aiconfigurator` command on
PATH, if any). It times aiconfigurator's `cli_estimate` and moesim's `evaluate` on the same
estimate (Mixtral-8x7B, 8x H100 SXM, EP8, batch 32, isl 1024, osl 256: TTFT and TPOT), both
warm and in-process, and both as a command, and prints estimates-per-second ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TABLE_BEGIN = "<!-- speed-table:begin (benchmarks/suite.py --readme; do not edit by hand) -->"
TABLE_END = "<!-- speed-table:end -->"
MIXTRAL_CONFIG = "tests/data/hf_configs/Mixtral-8x7B-v0.1"


@dataclass(frozen=True)
class Case:
    """One benchmark: `run()` (in the child) returns {"wall_s", "work"} and optional notes."""

    name: str
    label: str
    fidelity: str
    unit: str  # what `work` counts
    run: Callable[[], dict] = field(repr=False)
    default: bool = True
    repeat: int | None = None  # overrides --repeat (long cases)
    command: list[str] | None = None  # a command-line case: the child is this command


# ---- cases (run in the child process) -------------------------------------------------------


def _step_case(model_name: str, nodes: int | None, placement: str, phase: str, batch: int,
               context: int, fidelity: str) -> dict:
    """One step: workload, traffic, costs and plan, route table, execution (bench_step.py)."""
    sys.path.insert(0, str(HERE))
    from bench_step import multinode, random_trace, timed_step

    from moesim.inputs.models import get_model
    from moesim.inputs.topology import load_topology
    from moesim.traffic.placement import parse_placement

    topo = load_topology("dgx-h100") if nodes is None else multinode(nodes)
    model = get_model(model_name)
    par = parse_placement(placement)
    tokens = batch * context if phase == "prefill" else batch
    trace = random_trace(model.num_moe_layers, tokens, model.num_experts, model.top_k)
    _, timeline, (prep_s, route_s, run_s), flows = timed_step(model, topo, par, trace, phase,
                                                              batch, context, fidelity)
    return {"wall_s": prep_s + route_s + run_s, "work": flows, "step_s": float(timeline.step_s),
            "split": f"prep {prep_s:.3f} s, routes {route_s:.3f} s, run {run_s:.3f} s"}


def _serve_case(requests: int, fidelity: str) -> dict:
    from moesim.inputs.config import Scenario, ServeSpec
    from moesim.planning.evaluate import EvaluationCache
    from moesim.planning.serving import serve

    spec = ServeSpec(concurrency=64, requests=requests, isl=1024, osl=256)
    scenario = Scenario(placement="EP8", topology="dgx-h100", fidelity=fidelity,
                        trace="bundled:mixtral8x7b_humaneval_synth", serve=spec)
    start = time.perf_counter()
    result = serve(scenario, EvaluationCache())
    wall_s = time.perf_counter() - start
    stats = result.stats
    return {"wall_s": wall_s, "work": requests,
            "split": f"{len(result.iterations)} iterations, "
                     f"{1e3 * wall_s / len(result.iterations):.2f} ms each",
            "p90_ttft_s": stats.ttft_s.p90, "p90_tpot_s": stats.tpot_s.p90}


def _sweep_case(ray: bool) -> dict:
    sys.path.insert(0, str(HERE))
    from bench_sweep import GRID

    from moesim.planning.sweep import expand_grid, run_sweep

    points = expand_grid(GRID, fidelity="analytic")
    address = None
    if ray:
        import ray as ray_module

        ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        address = "local"  # the instance just started: its start-up is not timed
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: the pool's (or the cluster's) workers start and import moesim, untimed
        run_sweep(points[:4], Path(tmp) / "warm.csv", workers=2, ray_address=address,
                  progress=False)
        start = time.perf_counter()
        summary = run_sweep(points, Path(tmp) / "bench.csv", workers=2, ray_address=address,
                            progress=False)
        wall_s = time.perf_counter() - start
    return {"wall_s": wall_s, "work": summary.points,
            "split": f"{summary.feasible} feasible, 2 workers"}


def _estimate_scenario(fidelity: str):  # type: ignore[no-untyped-def]
    from moesim.inputs.config import Scenario

    return Scenario(model="mixtral-8x7b", topology="dgx-h100", placement="EP8", batch=32,
                    context=1024, fidelity=fidelity)


def _estimate_case(fidelity: str, runs: int = 20) -> dict:
    """moesim's estimate of TTFT and TPOT, warm, in-process: the fastest of `runs` calls."""
    from moesim.planning.evaluate import evaluate

    scenario = _estimate_scenario(fidelity)
    evaluate(scenario)  # warm: trace, model and topology resolved once per process
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        result = evaluate(scenario)
        best = min(best, time.perf_counter() - start)
    return {"wall_s": best, "work": 1, "split": f"TTFT {result.ttft_s * 1e3:.1f} ms, "
            f"TPOT {result.tpot_s * 1e3:.2f} ms (fastest of {runs} warm calls)"}


PEER_SCRIPT = f"""
import contextlib, io, json, sys, time, warnings, logging
warnings.filterwarnings("ignore")
logging.disable(logging.CRITICAL)
from aiconfigurator.cli.api import cli_estimate
def once():
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cli_estimate({str(ROOT / MIXTRAL_CONFIG)!r}, "h100_sxm", backend_name="trtllm",
                            mode="agg", batch_size=32, isl=1024, osl=256, tp_size=1,
                            attention_dp_size=8, moe_ep_size=8, moe_tp_size=1)
once()
best = float("inf")
for _ in range(int(sys.argv[1])):
    start = time.perf_counter()
    result = once()
    best = min(best, time.perf_counter() - start)
print(json.dumps({{"wall_s": best, "work": 1, "split": "TTFT %.1f ms, TPOT %.2f ms (fastest of "
                  "%s warm calls)" % (float(result.ttft), float(result.tpot), sys.argv[1])}}))
"""


def _peer_python() -> str | None:
    """A Python that imports aiconfigurator: MOESIM_PEER_PYTHON, else the interpreter of an
    `aiconfigurator` command on PATH (its shebang), else this one if it imports it."""
    if os.environ.get("MOESIM_PEER_PYTHON"):
        return os.environ["MOESIM_PEER_PYTHON"]
    command = shutil.which("aiconfigurator")
    if command:
        first = Path(command).read_text(errors="replace").splitlines()[:1]
        if first and first[0].startswith("#!"):
            return first[0][2:].strip().split()[0]
    probe = subprocess.run([sys.executable, "-c", "import aiconfigurator"], capture_output=True)
    return sys.executable if probe.returncode == 0 else None


def _cases() -> list[Case]:
    py = sys.executable
    scenario = "scenarios/mixtral-8x7b-ep8.yaml"
    return [
        Case("cli-version", "`moesim --version`", "", "runs", lambda: {},
             command=[py, "-m", "moesim", "--version"], repeat=5),
        Case("cli-run", "`moesim run` bundled scenario (README), to JSON", "des", "runs",
             lambda: {}, command=[py, "-m", "moesim", "run", scenario, "--json", "{tmp}/r.json"],
             repeat=5),
        Case("estimate-analytic", "one estimate in-process: Mixtral-8x7B EP8 dgx-h100 batch 32 "
             "(TTFT + TPOT)", "analytic", "estimates", lambda: _estimate_case("analytic")),
        Case("estimate-des", "the same estimate", "des", "estimates",
             lambda: _estimate_case("des")),
        Case("step-ep8-prefill-des", "Mixtral-8x7B EP8 prefill step, 16k tokens, dgx-h100",
             "des", "flows", lambda: _step_case("mixtral-8x7b", None, "EP8", "prefill", 8,
                                                2048, "des")),
        Case("step-ep8-prefill-analytic", "the same", "analytic", "flows",
             lambda: _step_case("mixtral-8x7b", None, "EP8", "prefill", 8, 2048, "analytic")),
        Case("step-ep8-decode-des", "Mixtral-8x7B EP8 decode step, 256 sequences, dgx-h100",
             "des", "flows", lambda: _step_case("mixtral-8x7b", None, "EP8", "decode", 256,
                                                4096, "des")),
        Case("step-ep8-decode-analytic", "the same", "analytic", "flows",
             lambda: _step_case("mixtral-8x7b", None, "EP8", "decode", 256, 4096, "analytic")),
        Case("step-ep64-analytic", "DeepSeek-V3 EP64 decode step, 2,048 sequences, 8 DGX H100",
             "analytic", "flows", lambda: _step_case("deepseek-v3", 8, "EP64", "decode", 2048,
                                                     4096, "analytic")),
        Case("step-ep64-des", "the same", "des", "flows",
             lambda: _step_case("deepseek-v3", 8, "EP64", "decode", 2048, 4096, "des")),
        Case("step-ep256-analytic", "DeepSeek-V3 EP256 decode step, 8,192 sequences, 32 DGX "
             "H100", "analytic", "flows", lambda: _step_case("deepseek-v3", 32, "EP256",
                                                              "decode", 8192, 4096, "analytic")),
        Case("step-ep256-des", "the same", "des", "flows",
             lambda: _step_case("deepseek-v3", 32, "EP256", "decode", 8192, 4096, "des"),
             default=False, repeat=1),
        Case("serve-10k", "serving 10,000 requests, Mixtral-8x7B EP8 dgx-h100, isl 1024, osl "
             "256, concurrency 64", "analytic", "requests", lambda: _serve_case(10_000,
                                                                                 "analytic")),
        Case("serve-200-des", "the same served with the DES, 200 requests", "des", "requests",
             lambda: _serve_case(200, "des"), repeat=1),
        Case("sweep-1008", "1,008-point sweep (bench_sweep.py grid), process pool",
             "analytic", "points", lambda: _sweep_case(ray=False)),
        Case("sweep-1008-ray", "the same sweep on Ray (`--ray local`), cluster up", "analytic",
             "points", lambda: _sweep_case(ray=True)),
        Case("peer-estimate", "aiconfigurator 0.12 `cli_estimate`, the same estimate "
             "in-process (peer)", "", "estimates", lambda: {}, command=["{peer}", "-c",
                                                                       PEER_SCRIPT, "3"],
             repeat=1),
        Case("peer-cli", "`aiconfigurator cli estimate`, the same estimate (peer)", "",
             "runs", lambda: {}, command=["{peer}", "-m", "aiconfigurator.main", "cli",
                                          "estimate", "--model-path", MIXTRAL_CONFIG,
                                          "--system", "h100_sxm", "--backend", "trtllm",
                                          "--estimate-mode", "agg", "--batch-size", "32",
                                          "--isl", "1024", "--osl", "256", "--tp-size", "1",
                                          "--attention-dp-size", "8", "--moe-ep-size", "8",
                                          "--moe-tp-size", "1"], repeat=3),
    ]


# ---- the parent: run children, measure, tabulate --------------------------------------------


@dataclass
class Figures:
    """One case's runs: wall times, CPU times, peak RSS, first output, what the child said."""

    case: str
    walls_s: list[float] = field(default_factory=list)
    cpus_s: list[float] = field(default_factory=list)
    rss_bytes: list[int] = field(default_factory=list)
    first_line_s: list[float] = field(default_factory=list)
    work: float = 0.0
    notes: dict = field(default_factory=dict)
    error: str | None = None


def _measure(case: Case, code: Path, peer: str | None, tmp: str) -> tuple[float, float, int,
                                                                           float, dict]:
    """Run `case` once in a child; (wall, cpu, peak rss, first output, child's report)."""
    env = dict(os.environ, PYTHONPATH=str(code), PYTHONHASHSEED="0")
    if case.command is not None:
        argv = [a.replace("{tmp}", tmp).replace("{peer}", peer or "") for a in case.command]
    else:
        argv = [sys.executable, str(Path(__file__).resolve()), "--child", case.name]
    start = time.perf_counter()
    child = subprocess.Popen(argv, cwd=code, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    first = child.stdout.readline()
    first_s = time.perf_counter() - start
    rest = child.stdout.read()
    errors = child.stderr.read()
    _, status, usage = os.wait4(child.pid, 0)
    wall_s = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        tail = errors.decode(errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"exit {child.returncode}: {' | '.join(tail)}")
    cpu_s = usage.ru_utime + usage.ru_stime
    rss = usage.ru_maxrss * 1024  # Linux: KiB
    if case.command is not None and case.name != "peer-estimate":
        return wall_s, cpu_s, rss, first_s, {"work": 1}
    report = json.loads((first + rest).decode().strip().splitlines()[-1])
    return float(report.pop("wall_s")), cpu_s, rss, first_s, report


def run_cases(cases: list[Case], repeat: int, code: Path, peer: str | None,
              log: Callable[[str], None]) -> list[Figures]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases:
            figures = Figures(case.name)
            runs = case.repeat or repeat
            for index in range(runs):
                log(f"{case.name}: run {index + 1}/{runs} ...")
                try:
                    wall, cpu, rss, first, report = _measure(case, code, peer, tmp)
                except (RuntimeError, json.JSONDecodeError, IndexError) as exc:
                    figures.error = str(exc)
                    log(f"{case.name}: failed: {exc}")
                    break
                figures.walls_s.append(wall)
                figures.cpus_s.append(cpu)
                figures.rss_bytes.append(rss)
                if case.unit == "runs":  # a command: its first line of output
                    figures.first_line_s.append(first)
                figures.work = float(report.pop("work"))
                figures.notes = report
            results.append(figures)
    return results


def _seconds(value: float) -> str:
    if value >= 10:
        return f"{value:.1f} s"
    if value >= 0.1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.1f} ms"
    return f"{value * 1e6:.0f} us"


def _rate(work: float, wall_s: float, unit: str) -> str:
    per_s = work / wall_s
    if per_s >= 1e6:
        return f"{per_s / 1e6:.2f}M {unit}/s"
    if per_s >= 1e3:
        return f"{per_s / 1e3:.1f}k {unit}/s"
    return f"{per_s:.3g} {unit}/s"


def table_rows(results: list[dict], before: dict[str, dict] | None = None) -> list[str]:
    """Markdown rows of the table (one per case that ran)."""
    cases = {c.name: c for c in _cases()}
    head = ["case", "fidelity", "wall min / median", "CPU", "peak RSS", "work/s"]
    if before is not None:
        head.append("before (median)")
    head.append("notes")
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fig in results:
        case = cases.get(fig["case"])
        if case is None or not fig["walls_s"]:
            continue
        walls = fig["walls_s"]
        wall = f"{_seconds(min(walls))} / {_seconds(statistics.median(walls))}"
        if fig["first_line_s"]:
            wall += f" (first line {_seconds(min(fig['first_line_s']))})"
        cells = [case.label, case.fidelity, wall, _seconds(min(fig["cpus_s"])),
                 f"{max(fig['rss_bytes']) / 1e6:.0f} MB",
                 _rate(fig["work"], min(walls), case.unit)]
        if before is not None:
            old = before.get(fig["case"])
            cells.append(_seconds(statistics.median(old["walls_s"]))
                         if old and old["walls_s"] else "")
        cells.append(str(fig["notes"].get("split", "")))
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def peer_ratios(results: list[dict]) -> list[str]:
    """Estimates per second against the peer planner, when both sides ran."""
    by = {f["case"]: f for f in results if f["walls_s"]}
    lines = []
    for ours, theirs, what in (("estimate-analytic", "peer-estimate", "in-process, analytic"),
                               ("estimate-des", "peer-estimate", "in-process, DES"),
                               ("sweep-1008", "peer-estimate", "a sweep's points, each a TTFT "
                                "and TPOT estimate of its own scenario, 2 workers, analytic"),
                               ("cli-run", "peer-cli", "as a command")):
        if ours in by and theirs in by:
            ours_per_s = by[ours]["work"] / min(by[ours]["walls_s"])
            ratio = ours_per_s / (by[theirs]["work"] / min(by[theirs]["walls_s"]))
            lines.append(f"- estimates per second against aiconfigurator ({what}): "
                         f"{ratio:.0f}x")
    return lines


def write_readme(readme: Path, rows: list[str], ratios: list[str], host: str) -> None:
    """Replace the text between the table markers (atomically)."""
    text = readme.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise SystemExit(f"{readme}: no speed-table markers ({TABLE_BEGIN} ... {TABLE_END})")
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    body = "\n".join([TABLE_BEGIN, f"Measured {host}.", "", *rows, "", *ratios, TABLE_END])
    temp = readme.with_name(readme.name + ".tmp")
    temp.write_text(head + body + tail)
    temp.replace(readme)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", help="comma-separated case names (default: the default set)")
    parser.add_argument("--list", action="store_true", help="list the cases and exit")
    parser.add_argument("--large", action="store_true", help="also the 256-GPU DES step")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (default 3; "
                        "some long cases set their own)")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose moesim runs")
    parser.add_argument("--peer-python", help="a Python that imports aiconfigurator")
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    parser.add_argument("--update", action="store_true", help="with --json: keep the saved "
                        "file's other cases, replacing only those run now")
    parser.add_argument("--from-json", type=Path, help="tabulate a saved run instead")
    parser.add_argument("--before", type=Path, help="a saved run shown as a 'before' column")
    parser.add_argument("--readme", type=Path, help="rewrite this README's speed table")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cases = _cases()
    if args.child:
        report = next(c for c in cases if c.name == args.child).run()
        print(json.dumps(report, default=float))
        return 0
    if args.list:
        for case in cases:
            print(f"{case.name:<26} {'default' if case.default else 'opt-in':<8} {case.label}")
        return 0
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        results, host = saved["results"], saved["host"]
    else:
        if args.cases:
            names = args.cases.split(",")
            unknown = sorted(set(names) - {c.name for c in cases})
            if unknown:
                parser.error(f"unknown case(s) {', '.join(unknown)}; see --list")
            chosen = [c for c in cases if c.name in names]
        else:
            chosen = [c for c in cases if c.default or (args.large and c.name.endswith("des"))]
        peer = args.peer_python or _peer_python()
        if peer is None:
            chosen = [c for c in chosen if not c.name.startswith("peer-")]
            print("aiconfigurator not found (--peer-python): no peer comparison",
                  file=sys.stderr)
        host = (f"on {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
                f"{time.strftime('%Y-%m-%d')}")
        ran = run_cases(chosen, args.repeat, args.code.resolve(), peer,
                        lambda line: print(line, file=sys.stderr, flush=True))
        results = [vars(f) for f in ran]
        if args.json and args.update and args.json.exists():  # replace the cases run now
            kept = json.loads(args.json.read_text())["results"]
            fresh = {f["case"]: f for f in results}
            order = [c.name for c in cases]
            merged = {f["case"]: f for f in kept} | fresh
            results = sorted(merged.values(), key=lambda f: order.index(f["case"]))
        if args.json:
            temp = args.json.with_name(args.json.name + ".tmp")
            temp.write_text(json.dumps({"host": host, "results": results}, indent=1) + "\n")
            temp.replace(args.json)
    before = None
    if args.before:
        before = {f["case"]: f for f in json.loads(args.before.read_text())["results"]}
    rows, ratios = table_rows(results, before), peer_ratios(results)
    print("\n".join(rows + [""] + ratios))
    failed = [f["case"] for f in results if f.get("error")]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    if args.readme:
        write_readme(args.readme, rows, ratios, host)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
