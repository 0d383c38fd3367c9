"""Bad inputs to every `moesim` entry point (issue 15, deliverable 3).

Each case runs `moesim.cli.main(argv)` in-process on one bad input (a hand-made file from
`tests/data/bad_inputs/`, a file generated here in tmp_path, or a bad flag) under a 20 s alarm
and holds the project rule (`tests/fuzz_helpers.py`): exit 2 with one `moesim: error:` line on
stderr (argparse usage errors: the usage block and one `moesim <cmd>: error:` line), no
traceback, no hang, and no exit 0 with garbage. Inputs that are odd but arguably valid (corpus
names starting `odd_`) may instead exit 0, if everything printed and written is finite.
Nothing starts processes: `validate live`'s ranks and `calibrate live|kernels`'s benchmarks are
replaced by a sentinel, so a bad input that gets that far fails its case.

Each input kind runs by default on its main command (about 950 cases and three small
hypothesis properties, under a minute once the fixes land); the same inputs on every other
command that reads them, and the hypothesis properties with many more examples, are the slow
tier (about 1000 more cases, marked `slow`), run only with `-m slow` or MOESIM_FUZZ_SLOW=1.
The hypothesis tests at the end draw scenario fields, topology specs and trace arrays.
`MOESIM_FUZZ_REPORT=FILE.json pytest tests/test_fuzz_cli.py` writes every case's outcome to
FILE (`python -m tests.fuzz_helpers FILE.json` prints the failures grouped by command and by
what went wrong); the per-command counts are printed when the module finishes.
"""

from __future__ import annotations

import copy
import importlib.util
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests.fuzz_helpers import (
    CORPUS,
    EITHER,
    ERROR,
    RESULTS,
    WouldSpawn,
    deep_list,
    deep_mapping,
    digits,
    expectation,
    judge,
    odd_bytes,
    record,
    run_cli,
    summary,
    tiny_zip,
)

ROOT = Path(__file__).resolve().parents[1]
NCCL_LOG = ROOT / "tests" / "data" / "nccl_tests" / "h100_8gpu_ring_allreduce_together.txt"
HF_MIXTRAL = ROOT / "tests" / "data" / "hf_configs" / "Mixtral-8x7B-v0.1" / "config.json"
HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None

# Small, fast, valid settings every case starts from (2 MoE layers, 64 trace tokens, analytic).
SMALL = ["--fidelity", "analytic", "--layers", "2", "--trace-tokens", "64"]
RUN_SMALL = [*SMALL, "--batch", "4", "--context", "128", "--phase", "decode", "--quiet"]
SERVE_SMALL = [*SMALL, "--requests", "4", "--isl", "16", "--osl", "2", "--quiet"]
CLOSED_LOOP = ["--concurrency", "2"]
PLAN_SMALL = ["--gpus-available", "8xH100", "--slo-tpot-ms", "50", "--context", "512",
              "--users", "8", "--fidelity", "analytic", "--quiet"]
MIXTRAL_SHAPE = (32, 64, 2)  # layers, tokens, k of the generated traces


# ---- inputs every case may use, built once --------------------------------------------------

class Base:
    """Valid inputs built once per module (in tmp) that bad cases mutate or sit beside."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.trace = folder / "good_trace.npz"
        _save(self.trace, _good_experts())
        self.measurement = _good_measurement()
        self.measurement_path = folder / "good_measurement.json"
        self.measurement_path.write_text(json.dumps(self.measurement))
        self.bench = _good_bench()
        self.bench_path = folder / "good_bench.json"
        self.bench_path.write_text(json.dumps(self.bench))
        self.kernel_csv = folder / "good_kernels.csv"
        self.kernel_csv.write_text("op,m,n,k,dtype,time_s\n" + "\n".join(
            f"gemm,{m},4096,4096,bf16,{2e-5 + m * 7e-8:.3e}" for m in (64, 1024, 8192)) + "\n")
        self._stats: dict[str, Any] | None = None
        self._compare: dict[str, Any] | None = None
        self._capture_model: Path | None = None

    def stats(self) -> dict[str, Any]:
        """`moesim trace stats --json` of the bundled trace's first 2 layers."""
        if self._stats is None:
            from moesim.trace.bundled import load_named_trace
            from moesim.trace.stats import compute_stats, stats_to_dict

            trace = load_named_trace("bundled:mixtral8x7b_humaneval_decode").first_layers(2)
            self._stats = {"trace": "bundled", "metadata": trace.metadata,
                           **stats_to_dict(compute_stats(trace, 8))}
        return copy.deepcopy(self._stats)

    def compare(self) -> dict[str, Any]:
        """`moesim compare --json` of a small EP8/TP8 comparison."""
        if self._compare is None:
            from moesim.cli import main

            out = self.folder / "good_compare.json"
            scenario = ROOT / "scenarios" / "mixtral-8x7b-ep8.yaml"
            assert main(["compare", str(scenario), "--placements", "EP8,TP8", *SMALL,
                         "--quiet", "--json", str(out)]) == 0
            self._compare = json.loads(out.read_text())
        return copy.deepcopy(self._compare)

    def capture_model(self) -> Path:
        """A tiny Mixtral with a word-level tokenizer saved locally (no hub)."""
        if not (HAS_TORCH and HAS_TRANSFORMERS):
            pytest.skip("trace capture needs torch and transformers")
        if self._capture_model is None:
            import torch
            import transformers
            from tokenizers import Tokenizer, models, pre_tokenizers

            folder = self.folder / "tiny-mixtral"
            words = "the a cat dog sat on mat ran fast slow".split()
            tokenizer = Tokenizer(models.WordLevel(
                {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}, unk_token="[UNK]"))
            tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
            transformers.PreTrainedTokenizerFast(
                tokenizer_object=tokenizer, unk_token="[UNK]").save_pretrained(folder)
            torch.manual_seed(0)
            config = transformers.MixtralConfig(
                vocab_size=16, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_local_experts=4, num_experts_per_tok=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=128)
            transformers.MixtralForCausalLM(config).eval().save_pretrained(folder)
            self._capture_model = folder
        return self._capture_model


def _good_experts(shape: tuple[int, int, int] = MIXTRAL_SHAPE) -> np.ndarray:
    """Distinct top-k ids in 0..7 per token."""
    layers, tokens, k = shape
    rng = np.random.default_rng(0)
    return np.stack([np.stack([rng.permutation(8)[:k] for _ in range(tokens)])
                     for _ in range(layers)]).astype(np.int16)


def _save(path: Path, experts: Any, **arrays: Any) -> None:
    """An .npz trace of `experts` with default seq_id/pos (override or drop any by keyword:
    pass None to leave an array out)."""
    tokens = np.asarray(experts).shape[1] if np.asarray(experts).ndim >= 2 else 1
    data = {"experts": experts, "seq_id": np.zeros(tokens, np.int32),
            "pos": np.arange(tokens, dtype=np.int32),
            "metadata": np.array(json.dumps({"format_version": "1"}))}
    data.update(arrays)
    np.savez(path, **{k: v for k, v in data.items() if v is not None})


def _good_measurement() -> dict[str, Any]:
    """A measurement whose bytes are exactly the simulator's (EP2, 2 layers, 16 tokens)."""
    from validate.measurement import (
        PHASES,
        build_measurement,
        expected_bytes,
        live_inputs,
        traffic_for_inputs,
    )

    inputs = live_inputs(model="mixtral-8x7b", trace="bundled:mixtral8x7b_humaneval_decode",
                         placement="EP2", backend="gloo", scale=1 / 64, layers=2, tokens=16)
    counts = expected_bytes(traffic_for_inputs(inputs))
    layers, world = counts.shape[:2]
    times = np.full((1, layers, world, len(PHASES)), 1e-3)
    return build_measurement(inputs, times, counts, np.full((1, world), 1e-2), 1.0)


def _good_bench() -> dict[str, Any]:
    """Saved `calibrate live` microbenchmarks: 4 gloo ranks, plausible times."""
    comm = [{"op": op, "num_ranks": 4, "size_bytes": float(size),
             "time_s": 1e-4 + size / 2e9} for op in ("alltoall", "allgather")
            for size in (4096, 65536, 1 << 20, 1 << 22)]
    gemm = [{"op": "gemm", "num_ranks": 4, "tokens": n, "time_s": 3e-5 + n * 2e-7}
            for n in (8, 32, 128, 512)]
    return {"backend": "gloo", "nproc": 4, "hidden": 128, "ffn": 448, "act_dtype": "bf16",
            "rows": comm + gemm, "device": "test", "threads_per_rank": 1}


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    return Base(tmp_path_factory.mktemp("fuzz-base"))


@pytest.fixture(scope="module", autouse=True)
def _report(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the per-command counts when the module ends; write every outcome where
    MOESIM_FUZZ_REPORT says."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and RESULTS:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line("bad inputs tried per command (tests/test_fuzz_cli.py):")
            for line in summary().splitlines():
                reporter.write_line("  " + line)
    target = os.environ.get("MOESIM_FUZZ_REPORT")
    if target:
        Path(target).write_text(json.dumps(RESULTS, indent=1, default=str))


@pytest.fixture(autouse=True)
def _no_processes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing a case runs may start ranks, microbenchmarks or reach the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)

    def sentinel(what: str) -> Callable[..., Any]:
        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise WouldSpawn(what)
        return refuse

    for module, name, what in (
        ("validate.launch", "_spawn", "starting rank processes (validate live)"),
        ("validate.microbench", "run_microbench", "running microbenchmarks (calibrate live)"),
        ("validate.kernel_bench", "run_kernel_bench", "running kernel benchmarks"),
    ):
        try:
            target = __import__(module, fromlist=[name])
        except ImportError:
            continue
        monkeypatch.setattr(target, name, sentinel(what))


# ---- cases -------------------------------------------------------------------------------------

class Ctx:
    """Where one case writes its inputs and outputs (its own tmp_path)."""

    def __init__(self, work: Path, base: Base) -> None:
        self.work = work
        self.base = base
        self.outputs: list[Path] = []

    def out(self, name: str) -> str:
        """An output path the judge checks for NaN/Infinity when the case exits 0."""
        path = self.work / name
        self.outputs.append(path)
        return str(path)

    def write(self, name: str, data: str | bytes) -> str:
        """Write an input file; returns its path."""
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
        return str(path)

    def json(self, name: str, data: Any) -> str:
        """Write `data` as JSON (NaN and Infinity as JSON's unofficial literals)."""
        return self.write(name, json.dumps(data))


@dataclass(frozen=True)
class Case:
    """One bad input to one command."""

    command: str
    name: str
    build: Callable[[Ctx], list[str]]
    expect: str = ERROR
    slow: bool = False  # secondary commands of an input kind: marked slow

    @property
    def id(self) -> str:
        return f"{self.command}::{self.name}"

    @property
    def param(self) -> Any:
        return pytest.param(self, id=self.id, marks=[pytest.mark.slow] if self.slow else [])


CASES: list[Case] = []


def case(command: str, name: str, build: Callable[[Ctx], list[str]],
         expect: str | None = None, slow: bool = False) -> None:
    CASES.append(Case(command, name, build, expect or expectation(name), slow))


def corpus(kind: str) -> list[Path]:
    """The hand-made files of one kind, sorted."""
    return sorted(p for p in (CORPUS / kind).iterdir() if p.is_file())


# -- scenario YAML: run, serve, compare

def _scenario_commands(name: str, make: Callable[[Ctx], str],
                       expect: str | None = None) -> None:
    case("run", f"scenario/{name}", lambda c: ["run", make(c), "--quiet", "--json",
                                               c.out("o.json")], expect)
    case("serve", f"scenario/{name}", lambda c: ["serve", make(c), *CLOSED_LOOP, "--requests", "4",
                                                 "--isl", "16", "--osl", "2", "--quiet", "--json",
                                                 c.out("o.json")], expect, slow=True)
    # --placements replaces the scenario's placement: its defects do not apply to compare; an
    # inline expert placement for another EP size makes the compared layout infeasible, which
    # compare lists with the reason (its design: layouts, not scenarios, are infeasible)
    replaced = (EITHER if name.startswith("placement_") or "long_line" in name
                or "expert_placement_inline" in name else expect)
    case("compare", f"scenario/{name}", lambda c: ["compare", make(c), "--placements", "EP8",
                                                   "--quiet", "--json", c.out("o.json")], replaced,
         slow=True)


for _path in corpus("scenario"):
    _scenario_commands(_path.name, lambda c, p=_path: str(p))

_SCENARIO_HEAD = ("model: mixtral-8x7b\nplacement: EP8\ntopology: dgx-h100\nphase: decode\n"
                  "fidelity: analytic\nlayers: 2\ntrace_tokens: 64\n")
_GENERATED_SCENARIOS: dict[str, str | bytes] = {
    **{f"{k}.yaml": v for k, v in odd_bytes().items()},
    "deep_list.yaml": _SCENARIO_HEAD + "batch: 4\ncontext: 128\n" + deep_list("description"),
    "deep_mapping.yaml": _SCENARIO_HEAD + "batch: 4\ncontext: 128\n" + deep_mapping("name"),
    "deep_list_in_model.yaml": _SCENARIO_HEAD.replace("model: mixtral-8x7b\n", "")
    + "batch: 4\ncontext: 128\n" + deep_list("model", 800),
    "batch_5000_digits.yaml": _SCENARIO_HEAD + f"batch: {digits()}\ncontext: 128\n",
    "context_5000_digits.yaml": _SCENARIO_HEAD + f"batch: 4\ncontext: {digits()}\n",
    "context_float_5000_digit_exponent.yaml": _SCENARIO_HEAD + "batch: 4\ncontext: 1.0e+5000\n",
    "long_line.yaml": _SCENARIO_HEAD + "batch: 4\ncontext: 128\nplacement: "
    + "EP8x" * 50000 + "\n",
}
for _name, _data in _GENERATED_SCENARIOS.items():
    _scenario_commands(f"generated/{_name}", lambda c, n=_name, d=_data: c.write(n, d))


# -- topology YAML: run, serve, collective, kernel, calibrate nccl-tests, validate compare

def _topology_commands(name: str, make: Callable[[Ctx], str],
                       expect: str | None = None) -> None:
    case("run", f"topology/{name}", lambda c: ["run", *RUN_SMALL, "--placement", "EP8",
                                               "--topology", make(c), "--json", c.out("o.json")],
         expect, slow=True)
    case("serve", f"topology/{name}", lambda c: ["serve", *SERVE_SMALL, *CLOSED_LOOP,
                                                 "--placement", "EP8", "--topology", make(c),
                                                 "--json", c.out("o.json")], expect, slow=True)
    case("collective", f"topology/{name}", lambda c: ["collective", "--topology", make(c),
                                                      "--op", "alltoall", "--bytes", "1M",
                                                      "--json"], expect)
    case("collective", f"topology/{name} allreduce sweep", lambda c: [
        "collective", "--topology", make(c), "--op", "allreduce", "--sweep", "1K:1G:64",
        "--fidelity", "analytic", "--json"], expect, slow=True)
    case("kernel", f"topology/{name}", lambda c: ["kernel", "--topology", make(c), "--op", "moe",
                                                  "--tokens", "64", "--json"], expect, slow=True)
    case("calibrate nccl-tests", f"topology/{name}", lambda c: [
        "calibrate", "nccl-tests", str(NCCL_LOG), "-t", make(c), "-o", c.out("o.yaml")], expect,
         slow=True)
    case("validate compare", f"topology/{name}", lambda c: [
        "validate", "compare", str(c.base.measurement_path), "--topology", make(c),
        "--fidelity", "analytic", "--json", c.out("o.json")], expect, slow=True)


for _path in corpus("topology"):
    _topology_commands(_path.name, lambda c, p=_path: str(p))

_TOPO_HEAD = "name: fuzz\ngpu_spec: h100-sxm\nnodes: 1\n"
_NVSWITCH = ("fabric:\n  - kind: nvswitch\n    port_bandwidth_bytes_per_s: {bw}\n"
             "    latency_s: {lat}\n")
_GENERATED_TOPOLOGIES: dict[str, str | bytes] = {
    **{f"{k}.yaml": v for k, v in odd_bytes().items()},
    "deep_list.yaml": _TOPO_HEAD + "gpus_per_node: 8\n"
    + _NVSWITCH.format(bw="4.5e+11", lat="1.0e-6") + deep_list("sources"),
    "gpus_per_node_5000_digits.yaml": _TOPO_HEAD + f"gpus_per_node: {digits()}\n"
    + _NVSWITCH.format(bw="4.5e+11", lat="1.0e-6"),
    "bandwidth_5000_digits.yaml": _TOPO_HEAD + "gpus_per_node: 8\n"
    + _NVSWITCH.format(bw=digits(), lat="1.0e-6"),
    "latency_5000_digits.yaml": _TOPO_HEAD + "gpus_per_node: 8\n"
    + _NVSWITCH.format(bw="4.5e+11", lat=digits()),
}
for _name, _data in _GENERATED_TOPOLOGIES.items():
    _topology_commands(f"generated/{_name}", lambda c, n=_name, d=_data: c.write(n, d))


# -- grid YAML: sweep

def _sweep(make: Callable[[Ctx], str]) -> Callable[[Ctx], list[str]]:
    return lambda c: ["sweep", make(c), "-o", c.out("o.csv"), "--workers", "1", "--no-progress"]


for _path in corpus("grid"):
    case("sweep", f"grid/{_path.name}", _sweep(lambda c, p=_path: str(p)))
_GRID = ("name: g\nplacements: [EP8]\ncontexts: [128]\ntopologies: [dgx-h100]\n"
         "fixed: {phase: decode, fidelity: analytic, layers: 2, trace_tokens: 64}\n")
for _name, _data in {**{f"{k}.yaml": v for k, v in odd_bytes().items()},
                     "batches_5000_digits.yaml": _GRID + f"batches: [{digits()}]\n",
                     "deep_list.yaml": _GRID + "batches: [4]\n" + deep_list("description"),
                     }.items():
    case("sweep", f"grid/generated/{_name}", _sweep(lambda c, n=_name, d=_data: c.write(n, d)))


# -- expert placement files: run, validate live (its checks only)

def _expert_placement_commands(name: str, make: Callable[[Ctx], str]) -> None:
    case("run", f"expert_placement/{name}", lambda c: [
        "run", *RUN_SMALL, "--placement", "EP8", "--topology", "dgx-h100",
        "--expert-placement", make(c), "--json", c.out("o.json")])
    case("validate live", f"expert_placement/{name}", lambda c: [
        "validate", "live", "--placement", "EP8", "--layers", "2", "--tokens", "16",
        "--expert-placement", make(c), "-o", c.out("o.json")], slow=True)


for _path in corpus("expert_placement"):
    _expert_placement_commands(_path.name, lambda c, p=_path: str(p))
for _name, _data in odd_bytes().items():
    _expert_placement_commands(f"generated/{_name}.yaml", lambda c, n=_name, d=_data:
                               c.write(n + ".yaml", d))


# -- requests JSONL: serve --requests-file

def _serve_requests(make: Callable[[Ctx], str]) -> Callable[[Ctx], list[str]]:
    return lambda c: ["serve", *SMALL, "--placement", "EP8", "--topology", "dgx-h100",
                      "--requests-file", make(c), "--quiet", "--json", c.out("o.json")]


for _path in corpus("requests"):
    case("serve", f"requests/{_path.name}", _serve_requests(lambda c, p=_path: str(p)),)
_GOOD_REQUEST = '{"arrival_s": 0.0, "prompt_tokens": 16, "output_tokens": 2}\n'
for _name, _data in {
    **{f"{k}.jsonl": v for k, v in odd_bytes().items()},
    "prompt_5000_digits.jsonl": _GOOD_REQUEST
    + f'{{"arrival_s": 0.5, "prompt_tokens": {digits()}, "output_tokens": 2}}\n',
    "deep_line.jsonl": _GOOD_REQUEST + "[" * 100000 + "]" * 100000 + "\n",
}.items():
    case("serve", f"requests/generated/{_name}",
         _serve_requests(lambda c, n=_name, d=_data: c.write(n, d)))


# -- HF config.json: run, kernel, plan

def _model_commands(name: str, make: Callable[[Ctx], str]) -> None:
    case("run", f"hf_config/{name}", lambda c: ["run", *RUN_SMALL, "--placement", "EP8",
                                                "--topology", "dgx-h100", "--model", make(c),
                                                "--json", c.out("o.json")])
    case("kernel", f"hf_config/{name}", lambda c: ["kernel", "--gpu", "h100-sxm", "--op", "moe",
                                                   "--tokens", "64", "--model", make(c),
                                                   "--json"], slow=True)
    case("plan", f"hf_config/{name}", lambda c: ["plan", *PLAN_SMALL, "--model", make(c),
                                                 "--json", c.out("o.json")], slow=True)


for _path in corpus("hf_config"):
    _model_commands(_path.name, lambda c, p=_path: str(p))
_HF = json.loads(HF_MIXTRAL.read_text())
for _name, _data in {
    **{f"{k}.json": v for k, v in odd_bytes().items()},
    "hidden_5000_digits.json": json.dumps(_HF).replace('"hidden_size": 4096',
                                                       f'"hidden_size": {digits()}'),
    "deep_nested.json": json.dumps({**_HF, "extra": 0}).replace(
        '"extra": 0', '"extra": ' + "[" * 50000 + "]" * 50000),
}.items():
    _model_commands(f"generated/{_name}", lambda c, n=_name, d=_data: c.write(n, d))


# -- router traces (.npz, built here): run, serve, trace stats|compare|synth, validate live

def _experts_with(change: Callable[[np.ndarray], Any]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        experts = _good_experts()
        replaced = change(experts)
        _save(path, experts if replaced is None else replaced)
    return write


def _set(index: Any, value: Any) -> Callable[[np.ndarray], None]:
    def change(experts: np.ndarray) -> None:
        experts[index] = value
    return change


def _arrays(**arrays: Any) -> Callable[[Path], None]:
    return lambda path: _save(path, _good_experts(), **arrays)


def _replace_zeros(experts: np.ndarray, dtype: Any, value: int) -> np.ndarray:
    """`experts` as `dtype` with every id 0 replaced by `value` (which int16 cannot hold)."""
    out = experts.astype(dtype)
    out[out == 0] = value
    return out


def _truncated(path: Path) -> None:
    _save(path, _good_experts())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


TOKENS = MIXTRAL_SHAPE[1]
BAD_TRACES: dict[str, Callable[[Path], None]] = {
    "not_a_zip": lambda p: p.write_text("not a zip archive"),
    "empty_file": lambda p: p.write_bytes(b""),
    "truncated": _truncated,
    "zip_without_arrays": lambda p: p.write_bytes(tiny_zip()),
    "missing_experts": lambda p: _save(p, None),
    "missing_seq_id": _arrays(seq_id=None),
    "missing_pos": _arrays(pos=None),
    "experts_float32": _experts_with(lambda e: e.astype(np.float32)),
    "experts_float_nan": _experts_with(lambda e: np.where(e == 0, np.nan, e).astype(np.float64)),
    "experts_bool": _experts_with(lambda e: e.astype(bool)),
    "experts_complex": _experts_with(lambda e: e.astype(np.complex64)),
    "experts_strings": _experts_with(lambda e: e.astype(str)),
    "experts_uint64_huge": _experts_with(lambda e: _replace_zeros(e, np.uint64, 2**63)),
    "experts_int64_above_int16": _experts_with(lambda e: _replace_zeros(e, np.int64, 40000)),
    "experts_2d": _experts_with(lambda e: e[0]),
    "experts_4d": _experts_with(lambda e: e[None]),
    "experts_scalar": _experts_with(lambda e: np.int16(3)),
    "experts_zero_tokens": lambda p: _save(p, _good_experts()[:, :0], seq_id=np.zeros(0, np.int32),
                                           pos=np.zeros(0, np.int32)),
    "experts_zero_layers": _experts_with(lambda e: e[:0]),
    "experts_k0": _experts_with(lambda e: e[:, :, :0]),
    "negative_ids": _experts_with(_set((1, 5, 1), -1)),
    "ids_beyond_model": _experts_with(_set((1, 5, 1), 9)),
    "duplicate_expert_in_topk": _experts_with(lambda e: np.repeat(e[:, :, :1], 2, axis=2)),
    "k_above_model_top_k": _experts_with(lambda e: np.stack(
        [np.stack([np.random.default_rng(t).permutation(8)[:3] for t in range(TOKENS)])
         for _ in range(32)]).astype(np.int16)),
    "seq_id_wrong_length": _arrays(seq_id=np.zeros(TOKENS + 3, np.int32)),
    "pos_wrong_length": _arrays(pos=np.arange(TOKENS - 1)),
    "seq_id_float_nan": _arrays(seq_id=np.full(TOKENS, np.nan)),
    "seq_id_2d": _arrays(seq_id=np.zeros((TOKENS, 2), np.int32)),
    "odd_seq_id_negative": _arrays(seq_id=np.full(TOKENS, -7, np.int32)),
    "pos_negative": _arrays(pos=-np.arange(1, TOKENS + 1)),
    "pos_huge": _arrays(pos=np.full(TOKENS, 2**40, np.int64)),
    "weights_wrong_shape": _arrays(weights=np.ones((2, 2), np.float32)),
    "weights_nan": _arrays(weights=np.full(MIXTRAL_SHAPE, np.nan, np.float32)),
    "weights_negative": _arrays(weights=np.full(MIXTRAL_SHAPE, -1.0, np.float32)),
    "weights_strings": _arrays(weights=np.full(MIXTRAL_SHAPE, "w")),
    "metadata_not_json": _arrays(metadata=np.array("{not json")),
    "metadata_json_list": _arrays(metadata=np.array("[1, 2]")),
    "metadata_2d": _arrays(metadata=np.array([["a", "b"], ["c", "d"]])),
    "metadata_num_experts_zero": _arrays(metadata=np.array(json.dumps({"num_experts": "0"}))),
    "odd_metadata_num_experts_word": _arrays(metadata=np.array(json.dumps({"num_experts": "x"}))),
    "odd_pos_not_increasing": _arrays(pos=np.arange(TOKENS)[::-1].copy()),
    "odd_seq_interleaved": _arrays(seq_id=np.arange(TOKENS) % 2),
    "odd_one_token": lambda p: _save(p, _good_experts((32, 1, 2))),
}
# Defects only against a model: a trace with them is fine on its own (stats, compare, synth).
MODEL_RELATIVE = {"ids_beyond_model", "k_above_model_top_k"}
# Defects only where the metadata's expert count is read (stats, compare, synth).
STATS_RELATIVE = {"metadata_num_experts_zero"}


def _trace_file(name: str) -> Callable[[Ctx], str]:
    def make(c: Ctx) -> str:
        path = c.work / f"{name}.npz"
        BAD_TRACES[name](path)
        return str(path)
    return make


for _name in BAD_TRACES:
    _make = _trace_file(_name)
    _alone = EITHER if _name in MODEL_RELATIVE else None  # trace-only commands
    _modelled = EITHER if _name in STATS_RELATIVE else None  # commands with a model
    case("run", f"trace/{_name}.npz", lambda c, m=_make: [
        "run", *RUN_SMALL, "--placement", "EP8", "--topology", "dgx-h100", "--trace", m(c),
        "--json", c.out("o.json")], _modelled)
    case("trace stats", f"trace/{_name}.npz", lambda c, m=_make: [
        "trace", "stats", m(c), "--json", c.out("o.json")], _alone)
    case("serve", f"trace/{_name}.npz", lambda c, m=_make: [
        "serve", *SERVE_SMALL, *CLOSED_LOOP, "--placement", "EP8", "--topology", "dgx-h100",
        "--trace", m(c), "--json", c.out("o.json")], _modelled, slow=True)
    case("trace compare", f"trace/{_name}.npz", lambda c, m=_make: [
        "trace", "compare", str(c.base.trace), m(c), "--json", c.out("o.json")], _alone,
        slow=True)
    case("trace synth", f"trace/{_name}.npz", lambda c, m=_make: [
        "trace", "synth", "--fit", m(c), "--tokens", "32", "--sequences", "1", "-o",
        c.out("o.npz")], _alone, slow=True)
    case("validate live", f"trace/{_name}.npz", lambda c, m=_make: [
        "validate", "live", "--placement", "EP2", "--trace", m(c), "-o", c.out("o.json")],
        _modelled, slow=True)


# -- measurement JSON: validate compare

def _mutate(data: dict[str, Any], edit: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    edit(data)
    return data


def _rank0(m: dict[str, Any], layer: int = 0) -> dict[str, Any]:
    return m["per_layer"][layer]["ranks"][0]


def _dispatch(m: dict[str, Any]) -> dict[str, Any]:
    return _rank0(m)["phases"]["dispatch"]


MEASUREMENT_EDITS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "per_layer_empty": lambda m: m.update(per_layer=[]),
    "per_layer_string": lambda m: m.update(per_layer="x"),
    "per_layer_entry_no_ranks": lambda m: m["per_layer"][0].pop("ranks"),
    "ranks_empty": lambda m: m["per_layer"][0].update(ranks=[]),
    "ranks_not_list": lambda m: m["per_layer"][0].update(ranks={"0": 1}),
    "rank_index_beyond": lambda m: _rank0(m).update(rank=99),
    "rank_index_negative": lambda m: _rank0(m).update(rank=-1),
    "layer_index_beyond": lambda m: m["per_layer"][1].update(layer=99),
    "layer_index_negative": lambda m: m["per_layer"][1].update(layer=-1),
    "layer_index_duplicated": lambda m: m["per_layer"][1].update(layer=0),
    "phases_missing": lambda m: _rank0(m).pop("phases"),
    "phase_unknown": lambda m: _rank0(m)["phases"].update(teleport=dict(_dispatch(m))),
    "bytes_negative": lambda m: _dispatch(m).update(sent_bytes=-8),
    "bytes_string": lambda m: _dispatch(m).update(sent_bytes="768"),
    "bytes_nan": lambda m: _dispatch(m).update(sent_bytes=float("nan")),
    "bytes_fractional": lambda m: _dispatch(m).update(sent_bytes=767.5),
    "time_nan": lambda m: _dispatch(m).update(time_s=float("nan")),
    "time_infinity": lambda m: _dispatch(m).update(time_s=float("inf")),
    "time_negative": lambda m: _dispatch(m).update(time_s=-1e-3),
    "time_string": lambda m: _dispatch(m).update(time_s="fast"),
    "time_null": lambda m: _dispatch(m).update(time_s=None),
    "time_mean_nan": lambda m: _dispatch(m).update(time_s_mean=float("nan")),
    "step_time_nan": lambda m: m.update(step_time_s=float("nan")),
    "inputs_not_mapping": lambda m: m.update(inputs="EP2"),
    "inputs_placement_unknown": lambda m: m["inputs"].update(placement="XP8"),
    "inputs_placement_missing": lambda m: m["inputs"].pop("placement"),
    "inputs_model_unknown": lambda m: m["inputs"].update(model="gpt-17-moe"),
    "inputs_trace_missing_file": lambda m: m["inputs"].update(trace="does_not_exist.npz"),
    "inputs_world_mismatch": lambda m: m["inputs"].update(world=3),
    "inputs_scale_zero": lambda m: m["inputs"].update(scale=0),
    "inputs_scale_nan": lambda m: m["inputs"].update(scale=float("nan")),
    "inputs_layers_zero": lambda m: m["inputs"].update(layers=0),
    "inputs_tokens_negative": lambda m: m["inputs"].update(tokens=-16),
    "inputs_act_dtype_unknown": lambda m: m["inputs"].update(act_dtype="int3"),
    "inputs_model_update_negative": lambda m: m["inputs"]["model_update"].update(hidden_size=-64),
}


def _validate_compare(make: Callable[[Ctx], str]) -> Callable[[Ctx], list[str]]:
    return lambda c: ["validate", "compare", make(c), "--fidelity", "analytic", "--json",
                      c.out("o.json")]


for _path in corpus("measurement"):
    case("validate compare", f"measurement/{_path.name}",
         _validate_compare(lambda c, p=_path: str(p)))
for _name, _edit in MEASUREMENT_EDITS.items():
    case("validate compare", f"measurement/generated/{_name}.json", _validate_compare(
        lambda c, n=_name, e=_edit: c.json(n + ".json", _mutate(c.base.measurement, e))))
for _name, _data in odd_bytes().items():
    case("validate compare", f"measurement/generated/{_name}.json",
         _validate_compare(lambda c, n=_name, d=_data: c.write(n + ".json", d)))


# -- nccl-tests logs: calibrate nccl-tests

def _nccl(make: Callable[[Ctx], str]) -> Callable[[Ctx], list[str]]:
    return lambda c: ["calibrate", "nccl-tests", make(c), "-t", "dgx-h100", "-o", c.out("o.yaml")]


for _path in corpus("nccl_tests"):
    case("calibrate nccl-tests", f"nccl_tests/{_path.name}", _nccl(lambda c, p=_path: str(p)))
for _name, _data in odd_bytes().items():
    case("calibrate nccl-tests", f"nccl_tests/generated/{_name}.txt",
         _nccl(lambda c, n=_name, d=_data: c.write(n + ".txt", d)))


# -- kernel profile YAML: run --kernels, kernel --kernels

for _path in corpus("kernel_profile"):
    case("run", f"kernel_profile/{_path.name}", lambda c, p=_path: [
        "run", *RUN_SMALL, "--placement", "EP8", "--topology", "dgx-h100", "--kernels", str(p),
        "--json", c.out("o.json")], slow=True)
    case("kernel", f"kernel_profile/{_path.name}", lambda c, p=_path: [
        "kernel", "--gpu", "h100-sxm", "--op", "moe", "--tokens", "64", "--kernels", str(p),
        "--json"])


# -- kernel tables (CSV): calibrate kernels --from-csv

def _kernels_csv(make: Callable[[Ctx], str]) -> Callable[[Ctx], list[str]]:
    return lambda c: ["calibrate", "kernels", "--from-csv", make(c), "--gpu", "h100-sxm", "-o",
                      c.out("o.yaml")]


for _path in corpus("kernel_csv"):
    case("calibrate kernels", f"kernel_csv/{_path.name}", _kernels_csv(lambda c, p=_path: str(p)))
for _name, _data in odd_bytes().items():
    case("calibrate kernels", f"kernel_csv/generated/{_name}.csv",
         _kernels_csv(lambda c, n=_name, d=_data: c.write(n + ".csv", d)))


# -- saved microbenchmarks: calibrate live --from-bench

def _rows_of(op: str) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    return lambda b: [r for r in b["rows"] if r["op"] == op]


BENCH_EDITS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "rows_empty": lambda b: b.update(rows=[]),
    "time_nan": lambda b: b["rows"][1].update(time_s=float("nan")),
    "time_infinity": lambda b: b["rows"][1].update(time_s=float("inf")),
    "time_negative": lambda b: b["rows"][1].update(time_s=-1e-4),
    "time_zero": lambda b: [r.update(time_s=0.0) for r in b["rows"]],
    "time_string": lambda b: b["rows"][1].update(time_s="slow"),
    "gemm_time_nan": lambda b: _rows_of("gemm")(b)[0].update(time_s=float("nan")),
    "size_negative": lambda b: b["rows"][1].update(size_bytes=-4096),
    "size_zero": lambda b: b["rows"][1].update(size_bytes=0),
    "odd_op_unknown": lambda b: b["rows"][1].update(op="teleport"),
    "num_ranks_zero": lambda b: [r.update(num_ranks=0) for r in b["rows"]],
    "nproc_zero": lambda b: b.update(nproc=0),
    "nproc_string": lambda b: b.update(nproc="four"),
    "hidden_zero": lambda b: b.update(hidden=0),
    "ffn_string": lambda b: b.update(ffn="wide"),
    "act_dtype_unknown": lambda b: b.update(act_dtype="int3"),
    "odd_backend_unknown": lambda b: b.update(backend="mpi"),
    "gemm_tokens_zero": lambda b: [r.update(tokens=0) for r in _rows_of("gemm")(b)],
    "only_gemm_rows": lambda b: b.update(rows=_rows_of("gemm")(b)),
    "only_comm_rows": lambda b: b.update(rows=[r for r in b["rows"] if r["op"] != "gemm"]),
    "row_not_mapping": lambda b: b["rows"].append([1, 2, 3]),
}


def _calibrate_bench(make: Callable[[Ctx], str]) -> Callable[[Ctx], list[str]]:
    return lambda c: ["calibrate", "live", "--from-bench", make(c), "-o", c.out("o.yaml")]


for _path in corpus("bench"):
    case("calibrate live", f"bench/{_path.name}", _calibrate_bench(lambda c, p=_path: str(p)))
_BENCH_DEFAULT = {"rows_empty", "time_nan", "time_negative", "num_ranks_zero", "row_not_mapping"}
for _name, _edit in BENCH_EDITS.items():
    case("calibrate live", f"bench/generated/{_name}.json", _calibrate_bench(
        lambda c, n=_name, e=_edit: c.json(n + ".json", _mutate(c.base.bench, e))),
        slow=_name not in _BENCH_DEFAULT)


# -- trace statistics JSON: trace synth --stats

def _first(field: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(s: dict[str, Any]) -> None:
        row = s[field][0]
        if isinstance(row, list):
            row[0] = value
        else:
            s[field][0] = value
    return edit


STATS_EDITS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "num_layers_zero": lambda s: s.update(num_layers=0),
    "num_layers_word": lambda s: s.update(num_layers="many"),
    "num_experts_zero": lambda s: s.update(num_experts=0),
    "num_experts_huge": lambda s: s.update(num_experts=10**9),
    "top_k_zero": lambda s: s.update(top_k=0),
    "top_k_above_experts": lambda s: s.update(top_k=9),
    "num_tokens_one": lambda s: s.update(num_tokens=1),
    "tokens_per_expert_nan": _first("tokens_per_expert", float("nan")),
    "tokens_per_expert_negative": _first("tokens_per_expert", -5),
    "tokens_per_expert_infinity": _first("tokens_per_expert", float("inf")),
    "tokens_per_expert_wrong_shape": lambda s: s.update(tokens_per_expert=[[1, 2]]),
    "tokens_per_expert_all_zero": lambda s: s.update(
        tokens_per_expert=[[0] * 8 for _ in range(32)]),
    "first_choice_counts_string": lambda s: s.update(first_choice_counts="many"),
    "repeat_first_pct_nan": _first("repeat_first_pct", float("nan")),
    "repeat_first_pct_above_100": _first("repeat_first_pct", 250.0),
    "cross_nmi_negative": _first("cross_nmi", -3.0),
}


def _synth_stats(make: Callable[[Ctx], str]) -> Callable[[Ctx], list[str]]:
    return lambda c: ["trace", "synth", "--stats", make(c), "--tokens", "32", "--sequences", "1",
                      "-o", c.out("o.npz")]


for _path in corpus("stats"):
    case("trace synth", f"stats/{_path.name}", _synth_stats(lambda c, p=_path: str(p)))
_STATS_DEFAULT = {"num_experts_zero", "top_k_zero", "tokens_per_expert_nan",
                  "tokens_per_expert_wrong_shape", "repeat_first_pct_nan"}
for _name, _edit in STATS_EDITS.items():
    case("trace synth", f"stats/generated/{_name}.json", _synth_stats(
        lambda c, n=_name, e=_edit: c.json(n + ".json", _mutate(c.base.stats(), e))),
        slow=_name not in _STATS_DEFAULT)


# -- comparison JSON: report

def _ranked0(d: dict[str, Any]) -> dict[str, Any]:
    return d["groups"][0]["ranked"][0]


COMPARE_EDITS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "kind_wrong": lambda d: d.update(kind="moesim.run"),
    "version_future": lambda d: d.update(version=99),
    "groups_not_list": lambda d: d.update(groups={"a": 1}),
    "groups_entry_string": lambda d: d.update(groups=["x"]),
    "group_missing_ranked": lambda d: d["groups"][0].pop("ranked"),
    "ranked_row_empty": lambda d: d["groups"][0].update(ranked=[{}]),
    "tpot_nan": lambda d: _ranked0(d).update(tpot_s=float("nan")),
    "tpot_infinity": lambda d: _ranked0(d).update(tpot_s=float("inf")),
    "tpot_string": lambda d: _ranked0(d).update(tpot_s="fast"),
    "tpot_negative": lambda d: _ranked0(d).update(tpot_s=-1.0),
    "tokens_per_s_nan": lambda d: _ranked0(d).update(tokens_per_s=float("nan")),
    "rank_string": lambda d: _ranked0(d).update(rank="first"),
    "topologies_not_list": lambda d: d.update(topologies="dgx-h100"),
    "scenario_not_mapping": lambda d: d.update(scenario=[1]),
    "slo_string": lambda d: d.update(slo="fast"),
    "assumptions_missing": lambda d: d.pop("assumptions"),
}


def _report_cmd(make: Callable[[Ctx], str], *extra: str) -> Callable[[Ctx], list[str]]:
    return lambda c: ["report", make(c), *extra]


for _path in corpus("compare_json"):
    case("report", f"compare_json/{_path.name}", _report_cmd(lambda c, p=_path: str(p)))
for _name, _edit in COMPARE_EDITS.items():
    case("report", f"compare_json/generated/{_name}.json", _report_cmd(
        lambda c, n=_name, e=_edit: c.json(n + ".json", _mutate(c.base.compare(), e))))
for _name in ("tpot_nan", "groups_entry_string", "ranked_row_empty"):
    case("report", f"compare_json/generated/{_name}.json --html", lambda c, n=_name: [
        "report", c.json(n + ".json", _mutate(c.base.compare(), COMPARE_EDITS[n])), "--quiet",
        "--html", c.out("o.html")])


# -- router logs: trace convert

for _path in corpus("convert"):
    case("trace convert", f"convert/{_path.name}", lambda c, p=_path: [
        "trace", "convert", "--from", "vllm-jsonl", str(p), "-o", c.out("o.npz")])
for _name, _data in odd_bytes().items():
    case("trace convert", f"convert/generated/{_name}.jsonl", lambda c, n=_name, d=_data: [
        "trace", "convert", "--from", "vllm-jsonl", c.write(n + ".jsonl", d), "-o",
        c.out("o.npz")])


def _npy(array: Any) -> Callable[[Ctx], str]:
    def make(c: Ctx) -> str:
        path = c.work / "ids.npy"
        np.save(path, array, allow_pickle=False)
        return str(path)
    return make


_IDS = np.random.default_rng(1).integers(0, 8, (16, 2, 4))
EXP_IDS: dict[str, Callable[[Ctx], str]] = {
    "float": _npy(_IDS.astype(np.float32)),
    "two_dims": _npy(_IDS[:, :, 0]),
    "negative": _npy(np.where(_IDS == 0, -1, _IDS)),
    "above_int16": _npy(np.where(_IDS == 0, 40000, _IDS)),
    "k0": _npy(_IDS[:, :0]),
    "zero_tokens": _npy(_IDS[:0]),
    "zero_layers": _npy(_IDS[:, :, :0]),
    "duplicate_in_topk": _npy(np.repeat(_IDS[:, :1], 2, axis=1)),
    "not_npy": lambda c: c.write("ids.npy", "not an array"),
    "truncated_npy": lambda c: (np.save(c.work / "ids.npy", _IDS),
                                c.write("ids.npy", (c.work / "ids.npy").read_bytes()[:100]))[1],
    "npz_two_arrays": lambda c: (np.savez(c.work / "ids.npz", a=_IDS, b=_IDS),
                                 str(c.work / "ids.npz"))[1],
}
for _name, _make in EXP_IDS.items():
    case("trace convert", f"exp-ids/{_name}", lambda c, m=_make: [
        "trace", "convert", "--from", "exp-ids", m(c), "-o", c.out("o.npz")])


def _logits(**arrays: Any) -> Callable[[Ctx], str]:
    def make(c: Ctx) -> str:
        path = c.work / "logits.npz"
        np.savez(path, **arrays)
        return str(path)
    return make


_LOGITS = np.random.default_rng(2).normal(size=(16, 8)).astype(np.float32)
HF_LOGITS: dict[str, tuple[Callable[[Ctx], str], list[str]]] = {
    "nan_logits": (_logits(layer_0=np.full_like(_LOGITS, np.nan), layer_1=_LOGITS), []),
    "inf_logits": (_logits(layer_0=np.where(_LOGITS > 0, np.inf, _LOGITS), layer_1=_LOGITS), []),
    "layers_of_different_shapes": (_logits(layer_0=_LOGITS, layer_1=_LOGITS[:5]), []),
    "one_dim": (_logits(layer_0=_LOGITS[0], layer_1=_LOGITS[0]), []),
    "empty_arrays": (_logits(layer_0=_LOGITS[:0], layer_1=_LOGITS[:0]), []),
    "no_layers": (_logits(something=_LOGITS), []),
    "odd_integer_logits": (_logits(layer_0=np.ones((16, 8), np.int64), layer_1=_LOGITS), []),
    "top_k_zero": (_logits(layer_0=_LOGITS, layer_1=_LOGITS), ["--top-k", "0"]),
    "top_k_negative": (_logits(layer_0=_LOGITS, layer_1=_LOGITS), ["--top-k", "-2"]),
    "top_k_above_experts": (_logits(layer_0=_LOGITS, layer_1=_LOGITS), ["--top-k", "99"]),
    "seq_id_wrong_length": (_logits(layer_0=_LOGITS, layer_1=_LOGITS,
                                    seq_id=np.zeros(3, np.int32)), []),
}
for _name, (_make, _extra) in HF_LOGITS.items():
    case("trace convert", f"hf-router-logits/{_name}", lambda c, m=_make, x=_extra: [
        "trace", "convert", "--from", "hf-router-logits", m(c), *(x or ["--top-k", "2"]),
        "-o", c.out("o.npz")])


# -- prompts: trace capture (needs torch and transformers; a tiny local model)

def _capture(source: list[str] | Callable[[Ctx], list[str]], *extra: str
             ) -> Callable[[Ctx], list[str]]:
    def build(c: Ctx) -> list[str]:
        given = source(c) if callable(source) else source
        return ["trace", "capture", "--model", str(c.base.capture_model()), *given, *extra,
                "--dtype", "fp32", "-o", c.out("o.npz")]
    return build


for _path in corpus("capture"):
    _flag = "--dataset-jsonl" if _path.suffix == ".jsonl" else "--text"
    case("trace capture", f"capture/{_path.name}", _capture([_flag, str(_path)]))
for _name, _data in odd_bytes().items():
    # NUL and control characters are valid UTF-8: a prompt holding them may be traced
    case("trace capture", f"capture/generated/{_name}.txt",
         _capture(lambda c, n=_name, d=_data: ["--text", c.write(n + ".txt", d)]),
         EITHER if _name == "nul_bytes" else None)
    case("trace capture", f"capture/generated/{_name}.jsonl",
         _capture(lambda c, n=_name, d=_data: ["--dataset-jsonl", c.write(n + ".jsonl", d)]))


# -- bad flags, per command ------------------------------------------------------------------------

def flags(command: str, name: str, argv: list[str] | Callable[[Ctx], list[str]],
          expect: str = ERROR, slow: bool = False) -> None:
    """A bad flag case; `{out.EXT}` in argv becomes an output path in the case's folder."""
    def build(c: Ctx) -> list[str]:
        given = argv(c) if callable(argv) else argv
        return [c.out(a[5:-1]) if a.startswith("{out.") else a for a in given]
    case(command, f"flags/{name}", build, expect, slow)


_RUN = ["run", *RUN_SMALL, "--placement", "EP8", "--topology", "dgx-h100"]
for _name, _extra, _expect in [
    ("batch_zero", ["--batch", "0"], ERROR),
    ("batch_negative", ["--batch", "-1"], ERROR),
    ("batch_word", ["--batch", "many"], ERROR),
    ("context_nan", ["--context", "nan"], ERROR),
    ("decode_steps_zero", ["--decode-steps", "0"], ERROR),
    ("placement_empty", ["--placement", ""], ERROR),
    ("placement_ep0", ["--placement", "EP0"], ERROR),
    ("placement_tp0", ["--placement", "TP0"], ERROR),
    ("placement_ep_negative", ["--placement", "EP-8"], ERROR),
    ("placement_dp0", ["--placement", "EP8xDP0"], ERROR),
    ("placement_huge", ["--placement", "EP" + "9" * 30], ERROR),
    ("placement_garbage", ["--placement", "x" * 5000], ERROR),
    ("layers_zero", ["--layers", "0"], ERROR),
    ("trace_tokens_zero", ["--trace-tokens", "0"], ERROR),
    ("mtp_acceptance_nan", ["--mtp", "1", "--mtp-acceptance", "nan"], ERROR),
    ("mtp_acceptance_inf", ["--mtp", "1", "--mtp-acceptance", "inf"], ERROR),
    ("mtp_acceptance_word", ["--mtp", "2", "--mtp-acceptance", "0.9,x"], ERROR),
    ("mtp_absurd", ["--mtp", "100"], ERROR),
    ("redundant_experts_negative", ["--eplb", "greedy", "--redundant-experts", "-1"], ERROR),
    ("kernels_missing_file", ["--kernels", "does_not_exist.yaml"], ERROR),
    ("expert_placement_missing_file", ["--expert-placement", "does_not_exist.yaml"], ERROR),
    ("model_missing_file", ["--model", "does_not_exist.json"], ERROR),
    ("model_directory_without_config", ["--model", "."], ERROR),
    ("topology_missing_file", ["--topology", "does_not_exist.yaml"], ERROR),
    ("trace_missing_file", ["--trace", "does_not_exist.npz"], ERROR),
    ("trace_directory", ["--trace", "."], ERROR),
    ("a2a_deepep_with_dedup", ["--a2a", "deepep-ll", "--dedup", "gpu"], ERROR),
    ("prefill_chunk_zero", ["--prefill-chunk-tokens", "0"], ERROR),
    ("odd_batch_absurd", ["--batch", "1000000000"], EITHER),
    ("odd_context_absurd", ["--context", "1000000000000"], EITHER),
    ("odd_prefill_chunk_one", ["--phase", "prefill", "--prefill-chunk-tokens", "1"], EITHER),
]:
    flags("run", _name, _RUN + _extra + ["--json", "{out.json}"], _expect)
flags("run", "odd_json_into_missing_folder", _RUN + ["--json", "no/such/folder/o.json"], EITHER)
flags("run", "json_is_a_directory", lambda c: _RUN + ["--json", str(c.work)])
flags("run", "scenario_missing_file", ["run", "does_not_exist.yaml"])
flags("run", "scenario_directory", ["run", "."])

_SERVE = ["serve", *SERVE_SMALL, "--placement", "EP8", "--topology", "dgx-h100"]
for _name, _extra, _expect in [
    ("no_arrival_process", [], ERROR),
    ("rate_nan", ["--rate", "nan"], ERROR),
    ("rate_inf", ["--rate", "inf"], ERROR),
    ("rate_negative", ["--rate", "-1"], ERROR),
    ("rate_zero", ["--rate", "0"], ERROR),
    ("concurrency_zero", ["--concurrency", "0"], ERROR),
    ("concurrency_negative", ["--concurrency", "-4"], ERROR),
    ("rate_and_concurrency", ["--rate", "1", "--concurrency", "2"], ERROR),
    ("requests_zero", [*CLOSED_LOOP, "--requests", "0"], ERROR),
    ("isl_zero", [*CLOSED_LOOP, "--isl", "0"], ERROR),
    ("osl_negative", [*CLOSED_LOOP, "--osl", "-1"], ERROR),
    ("isl_cv_nan", [*CLOSED_LOOP, "--isl-cv", "nan"], ERROR),
    ("osl_cv_inf", [*CLOSED_LOOP, "--osl-cv", "inf"], ERROR),
    ("burst_cv_zero", ["--rate", "1", "--burst-cv", "0"], ERROR),
    ("duration_nan", ["--rate", "1", "--duration-s", "nan"], ERROR),
    ("duration_without_rate", [*CLOSED_LOOP, "--duration-s", "5"], ERROR),
    ("rates_with_nan", ["--rates", "1,nan"], ERROR),
    ("rates_empty", ["--rates", ","], ERROR),
    ("rates_word", ["--rates", "fast"], ERROR),
    ("rates_negative", ["--rates", "1,-2"], ERROR),
    ("concurrencies_zero", ["--concurrencies", "0,1"], ERROR),
    ("concurrencies_fractional", ["--concurrencies", "1.5"], ERROR),
    ("field_map_no_name", ["--requests-file", "r.jsonl", "--field-map", "=x"], ERROR),
    ("field_map_unknown_field", ["--requests-file", "r.jsonl", "--field-map", "foo=bar"], ERROR),
    ("requests_file_missing", ["--requests-file", "does_not_exist.jsonl"], ERROR),
    ("requests_file_directory", ["--requests-file", "."], ERROR),
    ("disagg_two_parts", [*CLOSED_LOOP, "--disagg", "1P1D:EP4"], ERROR),
    ("disagg_zero_prefill", [*CLOSED_LOOP, "--disagg", "0P1D:EP4:EP4"], ERROR),
    ("disagg_garbage", [*CLOSED_LOOP, "--disagg", "fast"], ERROR),
    ("disagg_too_large", [*CLOSED_LOOP, "--disagg", "4P4D:EP8:EP8"], ERROR),
    ("slo_ttft_negative", [*CLOSED_LOOP, "--slo-ttft-ms", "-1"], ERROR),
    ("slo_tpot_nan", [*CLOSED_LOOP, "--slo-tpot-ms", "nan"], ERROR),
    ("kv_cache_tokens_zero", [*CLOSED_LOOP, "--kv-cache-tokens", "0"], ERROR),
    ("max_num_seqs_zero", [*CLOSED_LOOP, "--max-num-seqs", "0"], ERROR),
    ("max_batched_tokens_zero", [*CLOSED_LOOP, "--max-num-batched-tokens", "0"], ERROR),
    ("block_size_zero", [*CLOSED_LOOP, "--block-size", "0"], ERROR),
    ("warmup_negative", [*CLOSED_LOOP, "--warmup-requests", "-1"], ERROR),
    ("seed_negative", [*CLOSED_LOOP, "--seed", "-1"], ERROR),
    ("requests_out_unknown_suffix", [*CLOSED_LOOP, "--requests-out", "{out.txt}"], ERROR),
    ("odd_kv_cache_tokens_one", [*CLOSED_LOOP, "--kv-cache-tokens", "1"], EITHER),
    ("odd_max_batched_tokens_one", [*CLOSED_LOOP, "--max-num-batched-tokens", "1"], EITHER),
    ("odd_isl_absurd", [*CLOSED_LOOP, "--isl", "1000000000"], EITHER),
    ("odd_warmup_all", [*CLOSED_LOOP, "--warmup-requests", "100"], EITHER),
    ("odd_duration_tiny", ["--rate", "1", "--duration-s", "1e-300"], EITHER),
    ("odd_rate_tiny", ["--rate", "1e-300"], EITHER),
    ("odd_rate_huge", ["--rate", "1e300"], EITHER),
    ("odd_block_size_huge", [*CLOSED_LOOP, "--block-size", "1000000000"], EITHER),
]:
    flags("serve", _name, _SERVE + _extra + ["--json", "{out.json}"], _expect)

_COMPARE = ["compare", str(ROOT / "scenarios" / "mixtral-8x7b-ep8.yaml"), *SMALL, "--quiet"]
for _name, _extra, _expect in [
    ("placements_empty", ["--placements", ""], ERROR),
    ("placements_commas", ["--placements", ",,"], ERROR),
    ("odd_placements_unknown_only", ["--placements", "XP8"], EITHER),
    ("batch_zero", ["--placements", "EP8", "--batch", "0"], ERROR),
    ("batch_negative", ["--placements", "EP8", "--batch", "4,-1"], ERROR),
    ("batch_word", ["--placements", "EP8", "--batch", "many"], ERROR),
    ("topology_missing", ["--placements", "EP8", "--topology", "does_not_exist.yaml"], ERROR),
    ("topology_empty_list", ["--placements", "EP8", "--topology", ","], ERROR),
    ("variants_garbage", ["--placements", "EP8", "--variants", "=,="], ERROR),
    ("variants_unknown_field", ["--placements", "EP8", "--variants", "base,warp=9"], ERROR),
    ("max_tpot_nan", ["--placements", "EP8", "--max-tpot-ms", "nan"], ERROR),
    ("max_tpot_negative", ["--placements", "EP8", "--max-tpot-ms", "-5"], ERROR),
    ("max_ttft_inf", ["--placements", "EP8", "--max-ttft-ms", "inf"], ERROR),
    ("sweep_batches_garbage", ["--placements", "EP8", "--sweep-batches", "x"], ERROR),
    ("percentile_unknown", ["--placements", "EP8", "--percentile", "p101"], ERROR),
    ("serve_rate_nan", ["--placements", "EP8", "--rate", "nan"], ERROR),
    ("context_zero", ["--placements", "EP8", "--context", "0"], ERROR),
    ("html_is_a_directory", lambda c: ["--placements", "EP8", "--html", str(c.work)], ERROR),
    ("odd_placements_duplicated", ["--placements", "EP8,EP8"], EITHER),
]:
    if callable(_extra):
        flags("compare", _name, lambda c, x=_extra: _COMPARE + x(c) + ["--json", c.out("o.json")],
              _expect)
    else:
        flags("compare", _name, _COMPARE + _extra + ["--json", "{out.json}"], _expect)
flags("compare", "scenario_missing_file", ["compare", "does_not_exist.yaml"])

for _name, _argv in [
    ("results_missing_file", ["report", "does_not_exist.json"]),
    ("results_directory", ["report", "."]),
]:
    flags("report", _name, _argv)
flags("report", "html_is_a_directory", lambda c: [
    "report", c.json("c.json", c.base.compare()), "--quiet", "--html", str(c.work)])

_GRID_OK = ("name: g\nplacements: [EP8]\nbatches: [4]\ncontexts: [128]\ntopologies: [dgx-h100]\n"
            "fixed: {phase: decode, fidelity: analytic, layers: 2, trace_tokens: 64}\n")
for _name, _extra, _expect in [
    ("workers_zero", ["--workers", "0"], ERROR),
    ("workers_negative", ["--workers", "-3"], ERROR),
    ("max_points_negative", ["--max-points", "-1"], ERROR),
    ("out_unknown_suffix", ["-o", "{out.txt}"], ERROR),
    ("out_is_a_directory", lambda c: ["-o", str(c.work)], ERROR),
    ("odd_max_points_zero", ["--max-points", "0"], EITHER),
]:
    def _sweep_flags(c: Ctx, x: Any = _extra) -> list[str]:
        given = x(c) if callable(x) else x
        output = [] if "-o" in given else ["-o", c.out("o.csv")]
        return ["sweep", c.write("g.yaml", _GRID_OK), *output, *given, "--no-progress",
                *([] if "--workers" in given else ["--workers", "1"])]
    flags("sweep", _name, _sweep_flags, _expect)
flags("sweep", "grid_missing_file", ["sweep", "does_not_exist.yaml", "-o", "{out.csv}"])

_PLAN = ["plan", "--fidelity", "analytic", "--quiet"]
_PLAN_REQ = {"--gpus-available": "8xH100", "--slo-tpot-ms": "50", "--context": "512",
             "--users": "8"}
for _name, _changes, _expect in [
    ("gpus_empty", {"--gpus-available": ""}, ERROR),
    ("gpus_trailing_x", {"--gpus-available": "8xH100x"}, ERROR),
    ("gpus_zero", {"--gpus-available": "0xH100"}, ERROR),
    ("gpus_negative", {"--gpus-available": "-8xH100"}, ERROR),
    ("gpus_unknown_model", {"--gpus-available": "8xH999"}, ERROR),
    ("gpus_no_count", {"--gpus-available": "H100"}, ERROR),
    ("gpus_fractional", {"--gpus-available": "7.5xH100"}, ERROR),
    ("gpus_trailing_comma", {"--gpus-available": "8xH100,"}, ERROR),
    ("gpus_5000_digits", {"--gpus-available": digits() + "xH100"}, ERROR),
    ("odd_gpus_absurd", {"--gpus-available": "1000000000xH100"}, EITHER),
    ("slo_tpot_zero", {"--slo-tpot-ms": "0"}, ERROR),
    ("slo_tpot_negative", {"--slo-tpot-ms": "-50"}, ERROR),
    ("slo_tpot_nan", {"--slo-tpot-ms": "nan"}, ERROR),
    ("slo_tpot_inf", {"--slo-tpot-ms": "inf"}, ERROR),
    ("slo_ttft_nan", {"--slo-ttft-ms": "nan"}, ERROR),
    ("context_zero", {"--context": "0"}, ERROR),
    ("context_negative", {"--context": "-512"}, ERROR),
    ("users_zero", {"--users": "0"}, ERROR),
    ("users_negative", {"--users": "-8"}, ERROR),
    ("rate_nan", {"--rate": "nan"}, ERROR),
    ("top_zero", {"--top": "0"}, EITHER),  # documented: 0 shows every row
    ("top_negative", {"--top": "-1"}, ERROR),
    ("osl_zero", {"--osl": "0", "--slo-ttft-ms": "2000"}, ERROR),
    ("model_missing_file", {"--model": "does_not_exist.json"}, ERROR),
    ("trace_missing_file", {"--trace": "does_not_exist.npz"}, ERROR),
    ("odd_context_absurd", {"--context": "1000000000000"}, EITHER),
]:
    _args = {**_PLAN_REQ, **_changes}
    flags("plan", _name, _PLAN + [x for kv in _args.items() for x in kv] + ["--json", "{out.json}"],
          _expect)

_COLL = ["collective", "--topology", "dgx-h100", "--op", "alltoall"]
for _name, _extra, _expect in [
    ("bytes_negative", ["--bytes", "-1"], ERROR),
    ("bytes_zero", ["--bytes", "0"], ERROR),
    ("bytes_nan", ["--bytes", "nan"], ERROR),
    ("bytes_inf", ["--bytes", "inf"], ERROR),
    ("bytes_unit_unknown", ["--bytes", "1Q"], ERROR),
    ("odd_bytes_fractional", ["--bytes", "0.5"], EITHER),
    ("bytes_5000_digits", ["--bytes", digits()], ERROR),
    ("odd_bytes_huge", ["--bytes", "1e300"], EITHER),
    ("sweep_one_end", ["--sweep", "1K"], ERROR),
    ("sweep_reversed", ["--sweep", "1G:1K"], ERROR),
    ("sweep_factor_one", ["--sweep", "1K:1G:1"], ERROR),
    ("sweep_factor_zero", ["--sweep", "1K:1G:0"], ERROR),
    ("sweep_factor_nan", ["--sweep", "1K:1G:nan"], ERROR),
    ("sweep_factor_below_one", ["--sweep", "1K:1G:0.5"], ERROR),
    ("sweep_zero_start", ["--sweep", "0:1K"], ERROR),
    ("odd_sweep_huge_range", ["--sweep", "1:1e300:1.0001"], EITHER),
    ("gpus_zero", ["--bytes", "1M", "--gpus", "0"], ERROR),
    ("gpus_negative", ["--bytes", "1M", "--gpus", "-2"], ERROR),
    ("gpus_beyond_topology", ["--bytes", "1M", "--gpus", "100"], ERROR),
    ("gpus_per_process_zero", ["--bytes", "1M", "--gpus-per-process", "0"], ERROR),
    ("gpus_per_process_negative", ["--bytes", "1M", "--gpus-per-process", "-1"], ERROR),
    ("gpus_per_process_beyond", ["--bytes", "1M", "--gpus-per-process", "64"], ERROR),
    ("topology_missing_file", ["--bytes", "1M", "--topology", "does_not_exist.yaml"], ERROR),
    ("topology_unknown_preset", ["--bytes", "1M", "--topology", "dgx-z999"], ERROR),
]:
    flags("collective", _name, _COLL + _extra + ["--json"], _expect)
flags("collective", "nvls_without_nvswitch", ["collective", "--topology", "rtx4090-4x-pcie",
                                              "--op", "allreduce", "--bytes", "1M",
                                              "--algorithm", "nvls", "--json"])
flags("collective", "direct_allreduce", ["collective", "--topology", "dgx-h100", "--op",
                                         "allreduce", "--bytes", "1M", "--algorithm", "direct",
                                         "--json"])
flags("collective", "tree_alltoall", ["collective", "--topology", "dgx-h100", "--op", "alltoall",
                                      "--bytes", "1M", "--algorithm", "tree", "--json"])

_KERNEL = ["kernel", "--gpu", "h100-sxm", "--op", "moe"]
for _name, _argv, _expect in [
    ("tokens_zero", _KERNEL + ["--tokens", "0"], ERROR),
    ("tokens_negative", _KERNEL + ["--tokens", "-64"], ERROR),
    ("odd_tokens_absurd", _KERNEL + ["--tokens", "1000000000000"], EITHER),
    ("context_negative", ["kernel", "--gpu", "h100-sxm", "--op", "attention", "--tokens", "8",
                          "--context", "-1"], ERROR),
    ("context_zero_decode", ["kernel", "--gpu", "h100-sxm", "--op", "attention", "--tokens", "8",
                             "--phase", "decode", "--context", "0"], ERROR),
    ("gemm_n_zero", ["kernel", "--gpu", "h100-sxm", "--op", "gemm", "--tokens", "8", "--n", "0",
                     "--k", "4096"], ERROR),
    ("gemm_k_negative", ["kernel", "--gpu", "h100-sxm", "--op", "gemm", "--tokens", "8", "--n",
                         "4096", "--k", "-1"], ERROR),
    ("gpu_unknown", ["kernel", "--gpu", "h999", "--op", "moe", "--tokens", "8"], ERROR),
    ("placement_unknown", _KERNEL + ["--tokens", "8", "--placement", "XP8"], ERROR),
    ("placement_not_dividing", _KERNEL + ["--tokens", "8", "--placement", "EP3"], ERROR),
    ("placement_ep0", _KERNEL + ["--tokens", "8", "--placement", "EP0"], ERROR),
    ("model_missing_file", _KERNEL + ["--tokens", "8", "--model", "does_not_exist.json"], ERROR),
    ("model_unknown", _KERNEL + ["--tokens", "8", "--model", "gpt-17-moe"], ERROR),
    ("kernels_missing_file", _KERNEL + ["--tokens", "8", "--kernels", "nope.yaml"], ERROR),
    ("kernels_unknown", _KERNEL + ["--tokens", "8", "--kernels", "tensorrt-xyz"], ERROR),
    ("topology_missing_file", ["kernel", "--topology", "nope.yaml", "--op", "moe", "--tokens",
                               "8"], ERROR),
    ("fp4_on_hopper", _KERNEL + ["--tokens", "8", "--weight-dtype", "nvfp4"], EITHER),
]:
    flags("kernel", _name, _argv + ["--json"], _expect)

_BUNDLED = "mixtral8x7b_humaneval_decode"
for _name, _argv, _expect in [
    ("file_missing", ["trace", "stats", "does_not_exist.npz"], ERROR),
    ("bundled_unknown", ["trace", "stats", "bundled:nope"], ERROR),
    ("directory", ["trace", "stats", "."], ERROR),
    ("num_experts_zero", ["trace", "stats", _BUNDLED, "--num-experts", "0"], ERROR),
    ("num_experts_negative", ["trace", "stats", _BUNDLED, "--num-experts", "-8"], ERROR),
    ("num_experts_below_ids", ["trace", "stats", _BUNDLED, "--num-experts", "2"], ERROR),
    ("odd_num_experts_absurd", ["trace", "stats", _BUNDLED, "--num-experts", "30000"], EITHER),
    ("json_is_a_directory", lambda c: ["trace", "stats", _BUNDLED, "--json", str(c.work)], ERROR),
]:
    flags("trace stats", _name, _argv if callable(_argv) else [*_argv, "--json", "{out.json}"],
          _expect)

_SYNTH = ["trace", "synth", "--uniform", "--sequences", "1"]
for _name, _argv, _expect in [
    ("tokens_zero", ["trace", "synth", "--uniform", "--tokens", "0"], ERROR),
    ("tokens_negative", ["trace", "synth", "--uniform", "--tokens", "-5"], ERROR),
    ("sequences_zero", ["trace", "synth", "--uniform", "--tokens", "32", "--sequences", "0"],
     ERROR),
    ("sequences_negative", ["trace", "synth", "--uniform", "--tokens", "32", "--sequences", "-1"],
     ERROR),
    ("sequences_above_tokens", ["trace", "synth", "--uniform", "--tokens", "4", "--sequences",
                                "8"], ERROR),
    ("experts_zero", _SYNTH + ["--tokens", "32", "--experts", "0"], ERROR),
    ("experts_negative", _SYNTH + ["--tokens", "32", "--experts", "-8"], ERROR),
    ("experts_above_int16", _SYNTH + ["--tokens", "32", "--experts", "40000"], ERROR),
    ("top_k_zero", _SYNTH + ["--tokens", "32", "--top-k", "0"], ERROR),
    ("top_k_above_experts", _SYNTH + ["--tokens", "32", "--experts", "4", "--top-k", "5"], ERROR),
    ("layers_zero", _SYNTH + ["--tokens", "32", "--layers", "0"], ERROR),
    ("layers_negative", _SYNTH + ["--tokens", "32", "--layers", "-1"], ERROR),
    ("zipf_nan", ["trace", "synth", "--zipf", "nan", "--tokens", "32", "--sequences", "1"], ERROR),
    ("zipf_inf", ["trace", "synth", "--zipf", "inf", "--tokens", "32", "--sequences", "1"], ERROR),
    ("zipf_negative", ["trace", "synth", "--zipf", "-1", "--tokens", "32", "--sequences", "1"],
     ERROR),
    ("seed_negative", _SYNTH + ["--tokens", "32", "--seed", "-1"], ERROR),
    ("fit_missing_file", ["trace", "synth", "--fit", "nope.npz", "--tokens", "32"], ERROR),
    ("stats_missing_file", ["trace", "synth", "--stats", "nope.json", "--tokens", "32"], ERROR),
    ("fit_num_experts_zero", ["trace", "synth", "--fit", _BUNDLED, "--num-experts", "0",
                              "--tokens", "32", "--sequences", "1"], ERROR),
    ("fit_num_experts_below_ids", ["trace", "synth", "--fit", _BUNDLED, "--num-experts", "2",
                                   "--tokens", "32", "--sequences", "1"], ERROR),
    ("odd_tokens_large", _SYNTH + ["--tokens", "2000000", "--layers", "1"], EITHER),
]:
    flags("trace synth", _name, _argv + ["-o", "{out.npz}"], _expect,
          slow=_name == "odd_tokens_large")
flags("trace synth", "odd_output_is_a_directory", lambda c: _SYNTH + [
    "--tokens", "32", "-o", str(c.work)], EITHER)  # numpy writes DIR.npz beside it
flags("trace synth", "output_in_missing_folder", _SYNTH + ["--tokens", "32", "-o",
                                                           "no/such/folder/o.npz"])

for _name, _argv, _expect in [
    ("b_missing_file", ["trace", "compare", _BUNDLED, "nope.npz"], ERROR),
    ("batch_tokens_zero", ["trace", "compare", _BUNDLED, _BUNDLED, "--batch-tokens", "0"], ERROR),
    ("batch_tokens_negative", ["trace", "compare", _BUNDLED, _BUNDLED, "--batch-tokens", "-64"],
     ERROR),
    ("num_experts_zero", ["trace", "compare", _BUNDLED, _BUNDLED, "--num-experts", "0"], ERROR),
    ("num_experts_below_ids", ["trace", "compare", _BUNDLED, _BUNDLED, "--num-experts", "2"],
     ERROR),
    ("layers_differ", lambda c: ["trace", "compare", _BUNDLED, (
        _save(c.work / "t.npz", _good_experts((3, 16, 2))), str(c.work / "t.npz"))[1]], ERROR),
    ("odd_batch_tokens_absurd", ["trace", "compare", _BUNDLED, _BUNDLED, "--batch-tokens",
                                 "1000000000"], EITHER),
]:
    if callable(_argv):
        flags("trace compare", _name, lambda c, a=_argv: a(c) + ["--json", c.out("o.json")],
              _expect)
    else:
        flags("trace compare", _name, _argv + ["--json", "{out.json}"], _expect)

_CONVERT_JSONL = str(CORPUS / "convert" / "odd_duplicate_record.jsonl")
for _name, _argv in [
    ("input_missing", ["trace", "convert", "--from", "vllm-jsonl", "nope.jsonl"]),
    ("input_directory", ["trace", "convert", "--from", "vllm-jsonl", "."]),
    ("top_k_zero", ["trace", "convert", "--from", "vllm-jsonl", _CONVERT_JSONL, "--top-k", "0"]),
    ("num_experts_zero", ["trace", "convert", "--from", "vllm-jsonl", _CONVERT_JSONL,
                          "--num-experts", "0"]),
    ("num_experts_below_ids", ["trace", "convert", "--from", "vllm-jsonl", _CONVERT_JSONL,
                               "--num-experts", "1"]),
    ("raw_format_of_plain_log", ["trace", "convert", "--from", "vllm-raw-jsonl",
                                 _CONVERT_JSONL]),
    ("pt_file_that_is_text", lambda c: ["trace", "convert", "--from", "hf-router-logits",
                                        c.write("l.pt", "not torch"), "--top-k", "2"]),
]:
    if callable(_argv):
        flags("trace convert", _name, lambda c, a=_argv: a(c) + ["-o", c.out("o.npz")])
    else:
        flags("trace convert", _name, _argv + ["-o", "{out.npz}"])
flags("trace convert", "output_is_a_directory", lambda c: [
    "trace", "convert", "--from", "vllm-jsonl", _CONVERT_JSONL, "-o", str(c.work)])

flags("trace capture", "model_missing_folder", lambda c: [
    "trace", "capture", "--model", "does/not/exist", "--text", c.write("p.txt", "the cat"),
    "-o", c.out("o.npz")])
flags("trace capture", "text_missing", lambda c: [
    "trace", "capture", "--model", str(c.base.capture_model()), "--text", "does_not_exist.txt",
    "-o", c.out("o.npz")])
_PROMPT = "the cat sat on the mat"
for _name, _extra in [
    ("max_tokens_zero", ["--max-tokens", "0"]),
    ("max_tokens_negative", ["--max-tokens", "-1"]),
    ("max_prompt_tokens_zero", ["--max-prompt-tokens", "0"]),
    ("generate_negative", ["--generate", "-1"]),
    ("device_unknown", ["--device", "tpu9"]),
    ("dtype_fp8_on_cpu", ["--dtype", "fp8"]),
]:
    flags("trace capture", _name, lambda c, x=_extra: [
        "trace", "capture", "--model", str(c.base.capture_model()), "--text",
        c.write("p.txt", _PROMPT), *x, *([] if "--dtype" in x else ["--dtype", "fp32"]),
        "-o", c.out("o.npz")])

_MEAS = ["validate", "compare"]
flags("validate compare", "measurement_missing_file", _MEAS + ["nope.json"])
flags("validate compare", "measurement_directory", _MEAS + ["."])
flags("validate compare", "topology_missing_file", lambda c: _MEAS + [
    str(c.base.measurement_path), "--topology", "nope.yaml", "--json", c.out("o.json")])
flags("validate compare", "topology_too_small", lambda c: _MEAS + [
    str(c.base.measurement_path), "--topology", (c.write("one.yaml", (
        CORPUS / "topology" / "bw_zero.yaml").read_text().replace("gpus_per_node: 8",
                                                                 "gpus_per_node: 1")
        .replace("port_bandwidth_bytes_per_s: 0", "port_bandwidth_bytes_per_s: 1.0e+11"))),
    "--json", c.out("o.json")])
flags("validate compare", "json_is_a_directory", lambda c: _MEAS + [
    str(c.base.measurement_path), "--json", str(c.work)])

_LIVE = ["validate", "live", "--placement", "EP2"]
for _name, _extra in [
    ("nproc_zero", ["--nproc", "0"]),
    ("nproc_negative", ["--nproc", "-2"]),
    ("nproc_mismatch", ["--nproc", "3"]),
    ("placement_unknown", ["--placement", "XP8"]),
    ("placement_empty", ["--placement", ""]),
    ("placement_ep0", ["--placement", "EP0"]),
    ("scale_zero", ["--scale", "0"]),
    ("scale_above_one", ["--scale", "2"]),
    ("scale_nan", ["--scale", "nan"]),
    ("scale_division_by_zero", ["--scale", "1/0"]),
    ("layers_zero", ["--layers", "0"]),
    ("layers_negative", ["--layers", "-1"]),
    ("tokens_zero", ["--tokens", "0"]),
    ("tokens_negative", ["--tokens", "-16"]),
    ("repeats_zero", ["--repeats", "0"]),
    ("repeats_negative", ["--repeats", "-5"]),
    ("warmup_negative", ["--warmup", "-1"]),
    ("timeout_zero", ["--timeout-s", "0"]),
    ("timeout_negative", ["--timeout-s", "-5"]),
    ("timeout_nan", ["--timeout-s", "nan"]),
    ("inject_failure_garbage", ["--inject-failure", "x:y"]),
    ("inject_failure_rank_beyond", ["--inject-failure", "99"]),
    ("a2a_refused", ["--a2a", "deepep-ll"]),
    ("mtp_refused", ["--mtp", "1"]),
    ("model_missing_file", ["--model", "does_not_exist.json"]),
    ("model_unknown", ["--model", "gpt-17-moe"]),
    ("trace_missing_file", ["--trace", "does_not_exist.npz"]),
    ("expert_placement_missing_file", ["--expert-placement", "does_not_exist.yaml"]),
    ("eplb_and_expert_placement", ["--eplb", "greedy", "--expert-placement",
                                   str(CORPUS / "expert_placement" / "odd_replicated.yaml")]),
    ("redundant_without_eplb", ["--redundant-experts", "2"]),
    ("nccl_without_gpu", ["--backend", "nccl"]),
]:
    flags("validate live", _name, _LIVE + _extra + ["-o", "{out.json}"])

_CAL_NCCL = ["calibrate", "nccl-tests", str(NCCL_LOG), "-t", "dgx-h100"]
for _name, _extra in [
    ("gpus_zero", ["--gpus", "0"]),
    ("gpus_negative", ["--gpus", "-8"]),
    ("gpus_beyond_topology", ["--gpus", "64"]),
    ("min_bytes_garbage", ["--min-bytes", "lots"]),
    ("min_bytes_nan", ["--min-bytes", "nan"]),
    ("min_above_max", ["--min-bytes", "1G", "--max-bytes", "1K"]),
    ("max_bytes_negative", ["--max-bytes", "-1"]),
    ("ops_unknown", ["--ops", "teleport"]),
    ("medium_unknown", ["--medium", "carrier-pigeon"]),
]:
    flags("calibrate nccl-tests", _name, _CAL_NCCL + _extra + ["-o", "{out.yaml}"])
flags("calibrate nccl-tests", "log_missing_file", ["calibrate", "nccl-tests", "nope.txt", "-t",
                                                   "dgx-h100", "-o", "{out.yaml}"])
flags("calibrate nccl-tests", "log_directory", ["calibrate", "nccl-tests", ".", "-t", "dgx-h100",
                                                "-o", "{out.yaml}"])
flags("calibrate nccl-tests", "output_is_a_directory", lambda c: _CAL_NCCL + ["-o", str(c.work)])

_CAL_LIVE = ["calibrate", "live"]
for _name, _extra in [
    ("nproc_zero", ["--nproc", "0"]),
    ("nproc_negative", ["--nproc", "-4"]),
    ("sizes_garbage", ["--sizes", "lots"]),
    ("sizes_zero", ["--sizes", "0"]),
    ("sizes_negative", ["--sizes", "-4K"]),
    ("sizes_empty", ["--sizes", ","]),
    ("gemm_tokens_zero", ["--gemm-tokens", "0"]),
    ("gemm_tokens_garbage", ["--gemm-tokens", "x"]),
    ("scale_zero", ["--scale", "0"]),
    ("scale_above_one", ["--scale", "3"]),
    ("scale_nan", ["--scale", "nan"]),
    ("load_tokens_negative", ["--load-tokens", "-1"]),
    ("repeats_zero", ["--repeats", "0"]),
    ("warmup_negative", ["--warmup", "-1"]),
    ("timeout_zero", ["--timeout-s", "0"]),
    ("timeout_nan", ["--timeout-s", "nan"]),
    ("topology_missing_file", ["-t", "does_not_exist.yaml"]),
    ("nccl_without_topology", ["--backend", "nccl"]),
    ("trace_missing_file", ["--trace", "does_not_exist.npz"]),
    ("model_unknown", ["--model", "gpt-17-moe"]),
    ("from_bench_missing_file", ["--from-bench", "does_not_exist.json"]),
]:
    flags("calibrate live", _name, _CAL_LIVE + _extra + ["-o", "{out.yaml}"])
flags("calibrate live", "from_bench_topology_too_small", lambda c: _CAL_LIVE + [
    "--from-bench", str(c.base.bench_path), "-t", "rtx4090-4x-pcie", "--nproc", "8",
    "-o", c.out("o.yaml")])

_CAL_K = ["calibrate", "kernels"]
for _name, _argv in [
    ("neither_device_nor_csv", lambda c: _CAL_K + ["--gpu", "h100-sxm"]),
    ("both_device_and_csv", lambda c: _CAL_K + ["--device", "cpu", "--from-csv",
                                                str(c.base.kernel_csv), "--gpu", "h100-sxm"]),
    ("gpu_unknown", lambda c: _CAL_K + ["--from-csv", str(c.base.kernel_csv), "--gpu", "h999"]),
    ("csv_missing_file", lambda c: _CAL_K + ["--from-csv", "nope.csv", "--gpu", "h100-sxm"]),
    ("csv_without_gpu", lambda c: _CAL_K + ["--from-csv", str(c.base.kernel_csv)]),
    ("topology_missing_file", lambda c: _CAL_K + ["--from-csv", str(c.base.kernel_csv),
                                                  "--topology", "nope.yaml"]),
    ("cuda_without_gpu", lambda c: _CAL_K + ["--device", "cuda", "--gpu", "h100-sxm"]),
    ("model_unknown", lambda c: _CAL_K + ["--device", "cpu", "--model", "gpt-17-moe"]),
]:
    flags("calibrate kernels", _name, lambda c, a=_argv: a(c) + ["-o", c.out("o.yaml")])

# argparse-level mistakes: the usage block and one error line are accepted
for _command, _argv in [
    ("run", ["run", "--batch"]),
    ("run", ["run", "--phase", "sideways"]),
    ("serve", ["serve", "--rate", "fast"]),
    ("collective", ["collective", "--op", "alltoall", "--bytes", "1M"]),
    ("kernel", ["kernel", "--gpu", "h100-sxm", "--topology", "dgx-h100", "--op", "moe",
                "--tokens", "8"]),
    ("plan", ["plan", "--slo-tpot-ms", "50"]),
    ("trace synth", ["trace", "synth", "--uniform", "--zipf", "1.0", "--tokens", "8", "-o", "x"]),
    ("validate live", ["validate", "live", "-o", "x.json"]),
    ("calibrate nccl-tests", ["calibrate", "nccl-tests", "-o", "x.yaml"]),
]:
    flags(_command, f"argparse {' '.join(_argv[1:])[:40]}", _argv)


# ---- the corpus run ------------------------------------------------------------------------------

# Exit 1 is a documented verdict of these commands on valid input (plan: no candidate meets
# the SLO; validate compare: bytes differ), so an odd input may end there too.
VERDICT_EXIT = {"plan": 1, "validate compare": 1}


def check(command: str, name: str, argv: list[str], expect: str, ctx: Ctx,
          capsys: pytest.CaptureFixture[str]) -> None:
    """Run one case, record it, and fail it (without a Python traceback) when the rule breaks."""
    outcome = run_cli(argv, capsys)
    symptom = judge(outcome, expect, ctx.outputs, VERDICT_EXIT.get(command))
    record(command, name, argv, expect, outcome, symptom)
    if symptom is not None:
        pytest.fail(f"{command} {name}: {symptom}", pytrace=False)


def slow_requested(config: pytest.Config) -> bool:
    """Whether the slow tier runs: `-m slow` (or an expression naming slow without `not`), or
    MOESIM_FUZZ_SLOW=1. By default it is left out, so `pytest -q` stays near a minute."""
    expr = config.getoption("markexpr", "") or ""
    return os.environ.get("MOESIM_FUZZ_SLOW") == "1" or ("slow" in expr and "not slow" not in expr)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The corpus cases, the slow tier only when asked for (see `slow_requested`)."""
    if metafunc.function.__name__ == "test_bad_input":
        wanted = slow_requested(metafunc.config)
        metafunc.parametrize("case_", [c.param for c in CASES if wanted or not c.slow])


@pytest.fixture
def slow_tier(request: pytest.FixtureRequest) -> None:
    """Skip a slow-tier test unless the slow tier was asked for."""
    if not slow_requested(request.config):
        pytest.skip("slow tier: run with -m slow or MOESIM_FUZZ_SLOW=1")


def test_bad_input(case_: Case, base: Base, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    """One bad input: exit 2 and one `moesim: error:` line (or, for odd inputs, exit 0 with
    finite output); no traceback, no hang."""
    if case_.command == "trace capture" and not (HAS_TORCH and HAS_TRANSFORMERS):
        pytest.skip("trace capture needs torch and transformers")
    ctx = Ctx(tmp_path, base)
    check(case_.command, case_.name, case_.build(ctx), case_.expect, ctx, capsys)


def test_corpus_covers_every_command() -> None:
    """Every CLI entry point has bad inputs (trace capture only where torch is installed)."""
    commands = {c.command for c in CASES}
    assert commands >= {"run", "serve", "compare", "sweep", "plan", "collective", "kernel",
                        "trace stats", "trace synth", "trace convert", "trace compare",
                        "trace capture", "validate compare", "validate live",
                        "calibrate nccl-tests", "calibrate live", "calibrate kernels", "report"}


# The harness must hold good inputs to exit 0, or the bad cases prove nothing.
CONTROLS: list[tuple[str, Callable[[Ctx], list[str]]]] = [
    ("run", lambda c: [*_RUN, "--json", c.out("o.json")]),
    ("run scenario", lambda c: ["run", c.write("s.yaml", _SCENARIO_HEAD
                                               + "batch: 4\ncontext: 128\n"), "--quiet"]),
    ("serve", lambda c: [*_SERVE, *CLOSED_LOOP, "--json", c.out("o.json")]),
    ("serve requests file", _serve_requests(lambda c: c.write("r.jsonl", _GOOD_REQUEST))),
    ("compare", lambda c: [*_COMPARE, "--placements", "EP8", "--json", c.out("o.json")]),
    ("sweep", _sweep(lambda c: c.write("g.yaml", _GRID_OK))),
    ("plan", lambda c: [*_PLAN, *[x for kv in _PLAN_REQ.items() for x in kv]]),
    ("collective", lambda c: [*_COLL, "--bytes", "1M", "--json"]),
    ("kernel", lambda c: [*_KERNEL, "--tokens", "64", "--json"]),
    ("run trace", lambda c: [*_RUN, "--trace", str(c.base.trace)]),
    ("trace stats", lambda c: ["trace", "stats", str(c.base.trace), "--json", c.out("o.json")]),
    ("trace compare", lambda c: ["trace", "compare", _BUNDLED, str(c.base.trace)]),
    ("trace synth", lambda c: ["trace", "synth", "--fit", str(c.base.trace), "--tokens", "32",
                               "--sequences", "1", "-o", c.out("o.npz")]),
    ("trace synth stats", _synth_stats(lambda c: c.json("s.json", c.base.stats()))),
    ("trace convert", lambda c: ["trace", "convert", "--from", "vllm-jsonl", c.write(
        "v.jsonl", "".join((CORPUS / "convert" / "not_json.jsonl").read_text()
                           .splitlines(keepends=True)[:2])), "-o", c.out("o.npz")]),
    ("validate compare", _validate_compare(lambda c: str(c.base.measurement_path))),
    ("calibrate nccl-tests", lambda c: [*_CAL_NCCL, "-o", c.out("o.yaml")]),
    ("calibrate live", _calibrate_bench(lambda c: str(c.base.bench_path))),
    ("calibrate kernels", _kernels_csv(lambda c: str(c.base.kernel_csv))),
    ("report", _report_cmd(lambda c: c.json("c.json", c.base.compare()))),
    ("run model file", lambda c: [*_RUN, "--model", str(HF_MIXTRAL)]),
    ("run expert placement", lambda c: [*_RUN, "--expert-placement", str(
        CORPUS / "expert_placement" / "odd_replicated.yaml")]),
]


@pytest.mark.parametrize("name_build", CONTROLS, ids=[n for n, _ in CONTROLS])
def test_good_inputs_pass(name_build: tuple[str, Callable[[Ctx], list[str]]], base: Base,
                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The valid baseline each bad case departs from exits 0 with finite output."""
    ctx = Ctx(tmp_path, base)
    outcome = run_cli(name_build[1](ctx), capsys)
    assert outcome.code == 0 and judge(outcome, EITHER, ctx.outputs) is None, (
        outcome.exc_type, outcome.exc_msg, outcome.last_frame, outcome.err[-500:])


# ---- hypothesis: drawn scenario fields, topology specs and trace arrays -------------------------

# Small and reproducible by default (no shrinking: the first failing example is reported as
# drawn, which keeps a failing property as cheap as a passing one); `slow` runs many more and
# shrinks them.
FUZZ = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(FUZZ, max_examples=200, phases=[Phase.explicit, Phase.generate, Phase.shrink])

_ANY_NUMBER = st.one_of(
    st.integers(-3, 70), st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0, -1, 1, 10**12, 1e-300, 1e300, float("nan"), float("inf")]))
_JUNK = st.one_of(st.text(max_size=6), st.booleans(), st.none(),
                  st.lists(st.integers(), max_size=2))
SCENARIO_FIELDS = {
    "placement": st.one_of(st.sampled_from(["EP8", "TP8", "EP4xDP2", "TP2xEP4", "SP8", "EP1",
                                            "EP3", "EP16", "XP8", "", "TP0", "EP2xDP4xTP1"]),
                           st.text(max_size=8)),
    "phase": st.sampled_from(["prefill", "decode", "both"]),
    "batch": st.one_of(_ANY_NUMBER, _JUNK),
    "context": st.one_of(_ANY_NUMBER, _JUNK),
    "decode_steps": st.one_of(st.integers(-2, 5000), _JUNK),
    "prefill_chunk_tokens": st.one_of(st.integers(-2, 10000), st.floats()),
    "layers": st.one_of(st.integers(-1, 40), _JUNK),
    "trace_tokens": st.one_of(st.integers(-1, 400), _JUNK),
    "mtp": st.integers(-1, 20),
    "mtp_acceptance": st.one_of(st.floats(allow_nan=True), st.lists(st.floats(-1, 2), max_size=3)),
    "eplb": st.sampled_from(["none", "greedy", "deepseek", "magic"]),
    "redundant_experts": st.integers(-1, 20),
    "a2a": st.sampled_from(["direct", "allgather", "deepep-normal", "deepep-ll", "smoke"]),
    "dedup": st.sampled_from(["none", "gpu", "node", "all"]),
    "overlap": st.sampled_from(["none", "shared", "tbo"]),
    "weight_dtype": st.sampled_from(["bf16", "fp8", "fp8-block", "int4", "nvfp4", "mxfp4", "int3"]),
    "topology": st.sampled_from(["dgx-h100", "hgx-a100", "rtx4090-4x-pcie", "h100-2node-ib",
                                 "cpu-loopback", "nope"]),
    "fidelity": st.sampled_from(["analytic", "analytic", "des"]),
    "unknown_field": st.integers(),
}


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """The small valid scenario with 1-4 of its fields replaced by drawn values."""
    data: dict[str, Any] = {"model": "mixtral-8x7b", "placement": "EP8", "topology": "dgx-h100",
                            "phase": "decode", "batch": 4, "context": 128,
                            "fidelity": "analytic", "layers": 2, "trace_tokens": 64}
    names = draw(st.lists(st.sampled_from(sorted(SCENARIO_FIELDS)), min_size=1, max_size=4,
                          unique=True))
    for name in names:
        data[name] = draw(SCENARIO_FIELDS[name])
    if isinstance(data.get("batch"), int) and isinstance(data.get("context"), int) \
            and data["batch"] * data["context"] > 1 << 20 and data.get("fidelity") == "des":
        data["fidelity"] = "analytic"  # keep the DES small; analytic must still cope
    return data


def _fresh(tmp_path: Path) -> Path:
    """A new folder per hypothesis example (outputs must not be resumed or cached)."""
    import tempfile

    return Path(tempfile.mkdtemp(dir=tmp_path))


def _hypothesis_case(command: str, name: str, argv: list[str], ctx: Ctx,
                     capsys: pytest.CaptureFixture[str]) -> None:
    check(command, name, argv, EITHER, ctx, capsys)


def _scenario_property(data: dict[str, Any], base: Base, tmp_path: Path,
                       capsys: pytest.CaptureFixture[str]) -> None:
    ctx = Ctx(_fresh(tmp_path), base)
    path = ctx.write("s.yaml", yaml.safe_dump(data))
    _hypothesis_case("run", f"hypothesis scenario {json.dumps(data, default=str)}",
                     ["run", path, "--quiet", "--json", ctx.out("o.json")], ctx, capsys)


@FUZZ
@given(data=scenarios())
def test_drawn_scenarios(data: dict[str, Any], base: Base, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    """`moesim run` on drawn scenario fields: a clean error or a finite answer."""
    _scenario_property(data, base, tmp_path, capsys)


@pytest.mark.slow
@SLOW
@given(data=scenarios())
def test_drawn_scenarios_many(data: dict[str, Any], base: Base, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str], slow_tier: None) -> None:
    """The same with many more examples (marked slow)."""
    _scenario_property(data, base, tmp_path, capsys)


_LINK_NUMBER = st.one_of(
    st.floats(min_value=1e-12, max_value=1e15),
    st.sampled_from([0.0, -1.0, 1e-300, 1e300, float("inf"), float("nan"), 5e-324]),
    st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def topologies(draw: st.DrawFn) -> dict[str, Any]:
    """A topology spec of 1-8 GPUs on an nvswitch, loopback or explicit-link fabric with
    drawn bandwidths and latencies (and now and then a drawn GPU count or node count)."""
    gpus = draw(st.sampled_from([1, 2, 4, 8, 8, 0, -1]))
    kind = draw(st.sampled_from(["nvswitch", "loopback", "links"]))
    bandwidth, latency = draw(_LINK_NUMBER), draw(_LINK_NUMBER)
    spec: dict[str, Any] = {"name": "drawn", "gpu_spec": draw(st.sampled_from(
        ["h100-sxm", "h100-sxm", "l40s", "rtx4090"])), "gpus_per_node": gpus,
        "nodes": draw(st.sampled_from([1, 1, 1, 2, 0]))}
    if kind == "links":
        spec["extra_devices"] = {"sw0": "nvswitch"}
        spec["links"] = [{"src": f"gpu{g}", "dst": "sw0", "bandwidth_bytes_per_s": bandwidth,
                          "latency_s": latency} for g in range(max(gpus, 0))]
    else:
        spec["fabric"] = [{"kind": kind, "port_bandwidth_bytes_per_s": bandwidth,
                           "latency_s": latency}]
    if draw(st.booleans()):
        spec["collective_launch_s"] = draw(_LINK_NUMBER)
    if draw(st.booleans()):
        spec["link_efficiency"] = {draw(st.sampled_from(["nvlink", "loopback", "link"])):
                                   draw(_LINK_NUMBER)}
    return spec


_OPS = st.sampled_from(["alltoall", "allreduce", "allgather", "reducescatter"])
_SIZES = st.sampled_from(["1", "4K", "1M", "256M"])
_FIDELITY = st.sampled_from(["analytic", "analytic", "des"])


@FUZZ
@given(spec=topologies(), op=_OPS, size=_SIZES, fidelity=_FIDELITY)
def test_drawn_topologies(spec: dict[str, Any], op: str, size: str, fidelity: str, base: Base,
                          tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`moesim collective` on drawn topology specs: a clean error or finite times."""
    _topology_property(spec, op, size, fidelity, base, tmp_path, capsys)


@pytest.mark.slow
@SLOW
@given(spec=topologies(), op=_OPS, size=_SIZES, fidelity=_FIDELITY)
def test_drawn_topologies_many(spec: dict[str, Any], op: str, size: str, fidelity: str,
                               base: Base, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str], slow_tier: None) -> None:
    """The same with many more examples (marked slow)."""
    _topology_property(spec, op, size, fidelity, base, tmp_path, capsys)


def _topology_property(spec: dict[str, Any], op: str, size: str, fidelity: str, base: Base,
                       tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ctx = Ctx(_fresh(tmp_path), base)
    path = ctx.write("t.yaml", yaml.safe_dump(spec))
    _hypothesis_case("collective", f"hypothesis topology {json.dumps(spec)} {op} {size} "
                     f"{fidelity}", ["collective", "--topology", path, "--op", op, "--bytes",
                                     size, "--fidelity", fidelity, "--json"], ctx, capsys)


_TRACE_DTYPES = st.sampled_from([np.int16, np.int32, np.int64, np.uint8, np.float32, np.bool_])


@st.composite
def trace_arrays(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """experts[L, T, k] of a drawn dtype and small shape (ids -2..9, NaN for floats), with
    seq_id/pos usually of length T and now and then not."""
    dtype = draw(_TRACE_DTYPES)
    shape = draw(st.tuples(st.integers(0, 3), st.integers(0, 6), st.integers(0, 3)))
    if np.issubdtype(dtype, np.floating):
        elements = st.one_of(st.integers(-2, 9).map(float), st.just(float("nan")))
    elif dtype is np.bool_:
        elements = st.booleans()
    elif dtype is np.uint8:
        elements = st.integers(0, 9)
    else:
        elements = st.integers(-2, 9)
    experts = draw(hnp.arrays(dtype, shape, elements=elements))
    tokens = shape[1] + draw(st.sampled_from([0, 0, 0, 1, -1]))
    tokens = max(tokens, 0)
    seq_id = draw(hnp.arrays(np.int32, tokens, elements=st.integers(-1, 2)))
    pos = draw(hnp.arrays(np.int64, tokens, elements=st.integers(-1, 8)))
    return {"experts": experts, "seq_id": seq_id, "pos": pos}


_TINY_MODEL = ("name: tiny\nhidden_size: 64\nnum_layers: 3\nvocab_size: 100\n"
               "num_attention_heads: 4\nnum_kv_heads: 2\nhead_dim: 16\nnum_experts: 8\ntop_k: 2\n"
               "expert_ffn_size: 128\n")


@FUZZ
@given(arrays=trace_arrays())
def test_drawn_traces(arrays: dict[str, np.ndarray], base: Base, tmp_path: Path,
                      capsys: pytest.CaptureFixture[str]) -> None:
    """`moesim trace stats` and `moesim run` (a tiny 3-layer, 8-expert, top-2 model, EP2) on
    drawn trace arrays: a clean error or a finite answer."""
    _trace_property(arrays, base, tmp_path, capsys)


@pytest.mark.slow
@SLOW
@given(arrays=trace_arrays())
def test_drawn_traces_many(arrays: dict[str, np.ndarray], base: Base, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str], slow_tier: None) -> None:
    """The same with many more examples (marked slow)."""
    _trace_property(arrays, base, tmp_path, capsys)


def _trace_property(arrays: dict[str, np.ndarray], base: Base, tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    ctx = Ctx(_fresh(tmp_path), base)
    path = ctx.work / "t.npz"
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    path.write_bytes(buffer.getvalue())
    shape = f"{arrays['experts'].dtype}{arrays['experts'].shape} T={arrays['seq_id'].shape}"
    model = ctx.write("tiny.yaml", _TINY_MODEL)
    failures = []
    for command, argv in (
        ("trace stats", ["trace", "stats", str(path), "--json", ctx.out("stats.json")]),
        ("run", ["run", "--model", model, "--trace", str(path), "--placement", "EP2",
                 "--topology", "dgx-h100", "--batch", "2", "--context", "16", "--phase",
                 "decode", "--fidelity", "analytic", "--quiet", "--json", ctx.out("o.json")]),
    ):  # both commands run on every example before it fails
        try:
            _hypothesis_case(command, f"hypothesis trace {shape}", argv, ctx, capsys)
        except pytest.fail.Exception as exc:
            failures.append(str(exc))
    if failures:
        pytest.fail("; ".join(failures), pytrace=False)
