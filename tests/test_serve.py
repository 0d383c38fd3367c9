"""Serving under load: the scheduler against queueing theory and invariants, the engine's
iterations against its one-step figures, the workload inputs, and the command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from moesim.cli import main
from moesim.engine.collective_model import NCCL_LAUNCH_S
from moesim.errors import ConfigError
from moesim.inputs.config import Scenario, ServeSpec, parse_model
from moesim.inputs.models import get_model
from moesim.inputs.topology import Topology, load_topology
from moesim.planning.evaluate import EvaluationCache, evaluate
from moesim.planning.serving import serve
from moesim.serve.disagg import KvTransfer
from moesim.serve.kv_cache import KvCache
from moesim.serve.metrics import percentiles, request_stats
from moesim.serve.requests import Request, open_loop_requests, read_requests_file
from moesim.serve.scheduler import Scheduler
from moesim.serve.simulator import Engine, simulate
from moesim.traffic.placement import parse_placement
from tests.helpers import tiny_model

SYNTH = "bundled:mixtral8x7b_humaneval_synth"


def _engine(step_s: float, max_num_seqs: int = 256, blocks: int = 10**6, groups: int = 1,
            budget: int = 8192) -> Engine:
    """An engine whose every iteration takes `step_s` (no cost model)."""
    schedulers = [Scheduler(KvCache(blocks, 16), max_num_seqs, budget) for _ in range(groups)]
    return Engine("const", "both", schedulers, lambda batches: step_s)


def test_one_at_a_time_with_poisson_arrivals_is_md1() -> None:
    """One sequence at a time, every iteration 1 ms, each request 1 prefill + 3 decode
    iterations: a single server with deterministic service D = 4 ms. At rho = 0.6 the mean
    wait is the Pollaczek-Khinchine M/D/1 value lambda D^2 / (2 (1 - rho)) = 3 ms; the mean
    TTFT (wait plus the prefill iteration) matches it within 5% over 40,000 requests."""
    rate, service = 150.0, 4e-3
    spec = ServeSpec(rate=rate, requests=40_000, isl=16, osl=4)
    requests = open_loop_requests(spec, np.random.default_rng(7))
    run = simulate([_engine(1e-3, max_num_seqs=1)], requests)
    rho = rate * service
    wait_s = rate * service**2 / (2 * (1 - rho))
    ttft = np.mean([r.first_token_s - r.arrival_s for r in run.requests])
    assert ttft == pytest.approx(wait_s + 1e-3, rel=0.05)
    assert all(r.finish_s - r.first_token_s == pytest.approx(3e-3) for r in run.requests)


def test_littles_law_holds_on_the_engines_own_counts() -> None:
    """Time-average requests in the engine (running + waiting at each iteration, weighted by
    its duration) equals throughput x mean time in system within 5% (open loop, rho < 1)."""
    spec = ServeSpec(rate=40.0, requests=4000, isl=64, osl=16, isl_cv=0.5, osl_cv=0.5)
    run = simulate([_engine(2e-3, max_num_seqs=8)], open_loop_requests(
        spec, np.random.default_rng(3)))
    its = run.iterations
    span = its[-1].start_s + its[-1].duration_s - its[0].start_s
    in_system = sum((it.running + it.waiting) * it.duration_s for it in its) / span
    time_in_system = np.mean([r.finish_s - r.arrival_s for r in run.requests])
    assert in_system == pytest.approx(len(run.requests) / span * time_in_system, rel=0.05)


def test_every_request_gets_exactly_its_tokens_and_the_cache_holds() -> None:
    """Variable lengths, a small KV cache (1,024 tokens) and 16 concurrent clients: requests
    are preempted and recomputed, yet every one produces exactly its output tokens in order,
    and no scheduler ever holds more blocks than it has."""
    spec = ServeSpec(concurrency=16, requests=200, isl=200, osl=60, isl_cv=0.6, osl_cv=0.6)
    from moesim.serve.requests import closed_loop_first

    first, rest = closed_loop_first(spec, np.random.default_rng(1))
    counter = [len(first)]

    def next_request(done: Request, now: float) -> Request | None:
        if not rest:
            return None
        prompt, output = rest.popleft()
        counter[0] += 1
        return Request(counter[0] - 1, now, prompt, output, client=done.client)

    engine = _engine(1e-3, blocks=1024 // 16)
    caps = engine.schedulers[0].cache
    original = caps.grow

    def checked_grow(request: Request, tokens: int) -> bool:
        ok = original(request, tokens)
        assert caps.used <= caps.num_blocks
        return ok

    caps.grow = checked_grow  # type: ignore[method-assign]
    run = simulate([engine], first, next_request=next_request)
    assert len(run.requests) == 200
    assert run.preemptions > 0
    for r in run.requests:
        assert r.emitted == r.output_tokens == len(r.token_times_s)
        assert np.all(np.diff(r.token_times_s) > 0)
    assert max(it.kv_used_fraction for it in run.iterations) <= 1.0
    assert caps.used == 0


def test_a_request_too_large_for_the_cache_is_one_clear_error() -> None:
    """A prompt of 5,000 tokens where the cache holds 1,024: ConfigError naming the fix."""
    requests = [Request(0, 0.0, 5000, 4)]
    with pytest.raises(ConfigError, match="kv-cache-tokens"):
        simulate([_engine(1e-3, blocks=64, budget=8192)], requests)


def test_closed_loop_tpot_is_the_decode_step_at_that_batch() -> None:
    """Concurrency 8 with a one-token prompt on EP8 (one sequence per DP rank): every
    iteration after the first is a decode step of 8 sequences, so the mean TPOT is the
    one-batch decode step time at batch 8 (averaged over the same contexts) within 5%."""
    spec = ServeSpec(concurrency=8, requests=8, isl=1, osl=64)
    base = Scenario(placement="EP8", topology="dgx-h100", trace=SYNTH, fidelity="analytic")
    result = serve(base.model_copy(update={"serve": spec}))
    step = evaluate(base.model_copy(update={"phase": "decode", "batch": 8, "context": 32,
                                            "decode_steps": 16}), with_ttft=False)
    assert result.stats.tpot_s.mean == pytest.approx(step.tpot_s, rel=0.05)
    assert result.stats.requests == 8 and result.stats.output_tokens == 8 * 64


def test_uneven_attention_dp_costs_latency() -> None:
    """EP8 runs a scheduler per attention-DP rank. The same 8 decodes at context 2048 as one
    per rank or all on rank 0: piled up, the iteration is longer by at least rank 0's extra
    attention (7 more sequences' KV cache), since every rank waits for it at the dispatch;
    that is how DP-attention imbalance shows in every request's latency."""
    from moesim.engine.cost import attention_cost
    from moesim.planning.serving import _StepTimer

    cache = EvaluationCache()
    inputs = cache.resolver.inputs(Scenario(placement="EP8", topology="dgx-h100", trace=SYNTH,
                                            fidelity="analytic"))
    timer = _StepTimer(inputs, cache)

    def decoding(i: int) -> Request:
        r = Request(i, 0.0, 2048, 8, sequence=i, computed=2048, emitted=1)
        return r

    balanced = [[(decoding(i), 1)] for i in range(8)]
    piled = [[(decoding(i), 1) for i in range(8)]] + [[] for _ in range(7)]

    def attention_s(sequences: int) -> float:
        return float(attention_cost(inputs.model, inputs.topology.gpu_spec,  # type: ignore[union-attr]
                                    tokens=sequences, keys_attended=sequences * 2049.0,
                                    kv_cache_tokens_read=sequences * 2049.0, attn_tp=1,
                                    weight_bytes=2, act_bytes=2).time_s)

    extra_s = 32 * (attention_s(8) - attention_s(1))  # 32 blocks
    assert timer(piled) - timer(balanced) >= 0.9 * extra_s > 0


def test_kv_transfer_is_shards_over_the_links(two_gpu_link: Topology) -> None:
    """A prompt of 1,000 tokens of the tiny model (2 blocks x 1 KV head x dim 2 x K and V in
    bf16 = 16 bytes a token) from a TP1 prefill rank on gpu0 to a TP1 decode rank on gpu1:
    launch + 1 us + 16,000 B / 100 GB/s."""
    transfer = KvTransfer(two_gpu_link, tiny_model(), parse_placement("TP1"),
                          parse_placement("TP1"), 2)
    assert transfer.seconds(1000, 0, 0, 1, 0) == pytest.approx(
        NCCL_LAUNCH_S + 1e-6 + 1000 * 16 / 100e9, rel=1e-9)
    assert transfer.seconds(1000, 0, 0, 0, 0) == 0.0  # same GPU: nothing moves


def test_disaggregated_requests_wait_for_their_kv_transfer() -> None:
    """1P1D:EP4:EP4 on dgx-h100: every request finishes with its tokens; the prefill engine
    makes the first, and the second comes no sooner than the KV transfer after it."""
    spec = ServeSpec(concurrency=4, requests=12, isl=512, osl=8, disagg="1P1D:EP4:EP4")
    scenario = Scenario(topology="dgx-h100", trace=SYNTH, fidelity="analytic", serve=spec)
    result = serve(scenario)
    assert result.stats.requests == 12 and result.gpus == 8
    topo = load_topology("dgx-h100")
    transfer = KvTransfer(topo, get_model("mixtral-8x7b"), parse_placement("EP4"),
                          parse_placement("EP4"), 2)
    for r in result.requests:
        assert r.emitted == 8 and r.handoff_s is not None and r.first_token_s is not None
        # the first token reaches the client when the KV cache lands on the decode engine
        assert r.first_token_s - r.handoff_s == pytest.approx(transfer.seconds(512, 0, 0, 4, 0))


def test_the_prefill_engine_holds_kv_blocks_until_the_transfer_lands() -> None:
    """A prefill cache of 2 blocks holds one 20-token prompt; two arrive at 0. Every iteration
    takes 1 ms and a transfer 10 ms: the first hands off at 1 ms, its blocks come back at 11
    ms, so the second prefills 11-12 ms and hands off at 12 ms (not at 2 ms)."""
    prefill = Engine("p", "prefill", [Scheduler(KvCache(2, 16), 8, 8192, prefill_only=True)],
                     lambda batches: 1e-3)
    decode = Engine("d", "decode", [Scheduler(KvCache(100, 16), 8, 8192)], lambda batches: 1e-3)
    requests = [Request(0, 0.0, 20, 3), Request(1, 0.0, 20, 3)]
    run = simulate([prefill], requests, decode_engines=[decode],
                   transfer_s=lambda *args: 10e-3)
    assert [r.handoff_s for r in run.requests] == pytest.approx([1e-3, 12e-3])
    assert [r.first_token_s for r in run.requests] == pytest.approx([11e-3, 22e-3])
    assert all(r.emitted == 3 for r in run.requests)


def test_a_request_that_can_never_fit_is_refused_when_queued() -> None:
    """Two 100-token prompts on two DP groups of 4 blocks (64 tokens) each, arriving 1 ms
    apart: one clear error at once (not an endless loop of self-preemption)."""
    requests = [Request(0, 0.0, 100, 2), Request(1, 1e-3, 100, 2)]
    with pytest.raises(ConfigError, match="needs 7 KV blocks of 16 tokens .* raise "
                                          "--kv-cache-tokens"):
        simulate([_engine(1e-3, blocks=4, groups=2, budget=32)], requests)


def test_a_warm_up_covering_every_request_is_an_error() -> None:
    """--warmup-requests 10 of 4 requests would measure nothing: a ConfigError naming it."""
    spec = ServeSpec(concurrency=4, requests=4, isl=16, osl=2, warmup_requests=10)
    scenario = Scenario(topology="dgx-h100", trace=SYNTH, fidelity="analytic", serve=spec)
    with pytest.raises(ConfigError, match="--warmup-requests 10 leaves none of the 4"):
        serve(scenario)


def test_requests_leaving_prefill_together_spread_over_the_decode_groups() -> None:
    """1P1D:EP4:EP4: the decode engine has 4 attention-DP schedulers; 16 requests whose KV
    caches are in transfer at the same time go round robin, 4 to each (the group is chosen
    when the transfer starts, not when it lands)."""
    spec = ServeSpec(concurrency=16, requests=16, isl=256, osl=4, disagg="1P1D:EP4:EP4")
    scenario = Scenario(topology="dgx-h100", trace=SYNTH, fidelity="analytic", serve=spec)
    groups = [r.group for r in serve(scenario).requests]
    assert sorted(groups.count(g) for g in range(4)) == [4, 4, 4, 4]


def test_percentiles_and_goodput_follow_the_client_definitions() -> None:
    """TTFT from arrival, TPOT over the tokens after the first, ITL pooled, goodput counting
    requests inside both SLOs."""
    a = Request(0, 0.0, 4, 3)
    a.token_times_s, a.emitted, a.first_token_s, a.finish_s = [1.0, 1.5, 2.5], 3, 1.0, 2.5
    b = Request(1, 1.0, 4, 1)
    b.token_times_s, b.emitted, b.first_token_s, b.finish_s = [1.2], 1, 1.2, 1.2
    stats = request_stats([a, b], slo_ttft_s=0.5, slo_tpot_s=1.0)
    assert stats.ttft_s.mean == pytest.approx((1.0 + 0.2) / 2)
    assert stats.tpot_s.mean == pytest.approx(0.75)  # (2.5 - 1.0) / 2; b has one token
    assert stats.itl_s.p50 == pytest.approx(0.75)  # gaps 0.5 and 1.0
    assert stats.meeting_slo == 1 and stats.goodput_per_s == pytest.approx(1 / 2.5)
    assert percentiles([]).mean is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"arrival_s": 0, "prompt_tokens": 3}', "has no 'output_tokens'"),
        ('{"arrival_s": -1, "prompt_tokens": 3, "output_tokens": 2}', "finite time"),
        ('{"arrival_s": 0, "prompt_tokens": 0, "output_tokens": 2}', "whole numbers >= 1"),
        ('[1, 2]', "not a JSON object"),
        ('{"arrival_s": 0,', "is not JSON"),
    ],
)
def test_bad_request_files_name_the_line(tmp_path: Path, text: str, needle: str) -> None:
    """Each defect is one ConfigError naming the file and line."""
    path = tmp_path / "requests.jsonl"
    path.write_text('{"arrival_s": 0, "prompt_tokens": 3, "output_tokens": 2}\n' + text + "\n")
    with pytest.raises(ConfigError, match="line 2") as info:
        read_requests_file(path, {})
    assert needle in str(info.value)


def test_request_files_replay_sorted_with_a_field_map(tmp_path: Path) -> None:
    """Fields named otherwise are mapped; requests come back sorted by arrival."""
    path = tmp_path / "r.jsonl"
    path.write_text('{"t": 2.0, "in": 10, "out": 3}\n{"t": 0.5, "in": 20, "out": 4}\n')
    requests = read_requests_file(path, {"arrival_s": "t", "prompt_tokens": "in",
                                         "output_tokens": "out"})
    assert [(r.arrival_s, r.prompt_tokens, r.output_tokens) for r in requests] == [
        (0.5, 20, 4), (2.0, 10, 3)]


def test_serve_spec_takes_one_arrival_process() -> None:
    """rate, concurrency and requests_file exclude each other; duration needs a rate."""
    with pytest.raises(ConfigError, match="one of rate, concurrency"):
        parse_model(ServeSpec, {"rate": 1.0, "concurrency": 4}, "flags")
    with pytest.raises(ConfigError, match="duration_s needs"):
        parse_model(ServeSpec, {"concurrency": 4, "duration_s": 10}, "flags")


def test_serve_command_prints_percentiles_and_writes_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`moesim serve` on the bundled scenario: the table, the JSON keys of README's serving
    table, one row per request, and the plots."""
    out = tmp_path / "serve.json"
    code = main(["serve", "scenarios/mixtral-8x7b-ep8.yaml", "--concurrency", "4",
                 "--requests", "12", "--isl", "128", "--osl", "16", "--fidelity", "analytic",
                 "--slo-ttft-ms", "100", "--slo-tpot-ms", "20", "--json", str(out),
                 "--requests-out", str(tmp_path / "requests.csv"), "--plot", str(tmp_path)])
    assert code == 0
    table = capsys.readouterr().out
    assert "TTFT ms" in table and "p99" in table and "goodput" in table
    data = json.loads(out.read_text())
    assert data["requests"] == 12 and data["goodput_per_s"] is not None
    rows = (tmp_path / "requests.csv").read_text().splitlines()
    assert len(rows) == 13 and rows[0].startswith("id,arrival_s")
    assert (tmp_path / "serve_latency_cdf.png").stat().st_size > 10_000


def test_serve_without_an_arrival_process_is_one_error(capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """No --rate, --concurrency or --requests-file: one line naming them, exit 2."""
    assert main(["serve", "scenarios/mixtral-8x7b-ep8.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("moesim: error:") and "--concurrency" in err and "\n" not in err


def test_load_curve_reports_the_saturation_point(capsys: pytest.CaptureFixture[str]) -> None:
    """--concurrencies 1,4,16 on TP8: one row per level and the level where throughput stops
    growing."""
    code = main(["serve", "scenarios/mixtral-8x7b-tp8.yaml", "--concurrencies", "1,4",
                 "--requests", "8", "--isl", "64", "--osl", "8", "--fidelity", "analytic"])
    assert code == 0
    out = capsys.readouterr().out
    assert "saturation" in out and out.count("\n") >= 4


def test_saturation_is_the_last_level_before_throughput_stops_growing() -> None:
    """Throughput 100, 190, 300, 310 tokens/s at 1, 2, 4, 8: going to 8 adds 3.3% (< 5%), so
    the knee is 4; a curve still growing at its last level says saturation was not reached."""
    from moesim.output.serve_report import format_load_curve, saturation_level

    def point(level: float, tokens: float) -> dict[str, object]:
        figures = {"mean": 0.01, "p50": 0.01, "p90": 0.01, "p99": 0.01}
        return {"level": level, "result": {"output_tokens_per_s": tokens,
                                           "request_throughput_per_s": tokens / 100,
                                           "ttft_s": figures, "tpot_s": figures,
                                           "goodput_per_s": None}}

    curve = [point(1, 100), point(2, 190), point(4, 300), point(8, 310)]
    assert saturation_level(curve) == 4
    assert "stops growing beyond rate 4 " in format_load_curve(curve, "rate")
    growing = curve[:3]
    assert saturation_level(growing) == 4
    assert "not reached" in format_load_curve(growing, "rate")
