"""The per-step analytic path's shortcuts give what the plain computations give: templated plans
equal freshly built ones field by field, vectorised protocol resolution equals the scalar one,
the vectorised chain and timeline figures equal step-by-step ones, and a sweep's results do not
depend on what its caches hold."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

import moesim.engine.backends.analytic as analytic_backend
import moesim.engine.plan as plan_module
from moesim.engine.a2a import (
    DEEPEP,
    compute_slowdown,
    crosses_nodes,
    crosses_nodes_each,
    exchange_delay_and_wire,
    exchange_delays_and_wires,
)
from moesim.engine.backends import execute
from moesim.engine.cost import compute_model, step_costs
from moesim.engine.kernels import gemm_time
from moesim.engine.plan import (
    PHASES,
    Collective,
    Compute,
    Exchange,
    MicroBatch,
    PlanBuilder,
    StepPlan,
    build_step_plan,
    plan_layout,
)
from moesim.engine.protocols import alltoall_delay_and_wire, alltoall_delays_and_wires
from moesim.engine.routes import build_route_table
from moesim.engine.timeline import StepTimeline
from moesim.inputs.config import Scenario
from moesim.inputs.topology import Topology, load_topology
from moesim.planning.evaluate import (
    EvaluationCache,
    decode_step,
    evaluate,
    prefill_steps,
    step_traffic,
)
from moesim.planning.resolve import Resolver
from moesim.traffic.workload import split_step

# ---- plans: a template filled per step equals the plan written afresh ------------------------


def _fields(op: Any) -> dict[str, Any]:
    return {f.name: getattr(op, f.name) for f in dataclasses.fields(op)}


def assert_plans_equal(got: StepPlan, want: StepPlan) -> None:
    """Same class, same value of every field of every operation, in the same order."""
    assert (got.world, got.num_blocks, got.num_dense_blocks) == \
        (want.world, want.num_blocks, want.num_dense_blocks)
    assert len(got.ops) == len(want.ops)
    for index, (a, b) in enumerate(zip(got.ops, want.ops, strict=True)):
        assert type(a) is type(b), index
        fa, fb = _fields(a), _fields(b)
        assert fa.keys() == fb.keys()
        for name in fa:
            x, y = fa[name], fb[name]
            if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
                assert np.asarray(x).shape == np.asarray(y).shape, (index, name)
                assert np.array_equal(x, y), (index, a.name, name)
            else:
                assert x == y, (index, a.name, name, x, y)
    fresh = plan_layout(want.world, want.ops)
    for name in ("kind", "block", "phase", "lm_head", "ranks"):
        assert np.array_equal(getattr(got.layout, name), getattr(fresh, name)), name
    assert got.layout.chain == fresh.chain


def _step_parts(sc: Scenario, phase: str, index: int = 0) -> dict[str, Any]:
    """What `time_step` plans for the scenario's first prefill chunk or decode step `index`."""
    resolver = Resolver(cache=True)
    inputs = resolver.inputs(sc)
    assert inputs.topology is not None
    step = decode_step(inputs, index) if phase == "decode" else prefill_steps(inputs)[0][1]()
    traffic = step_traffic(inputs, step)
    cm = compute_model(sc.kernels, inputs.topology.gpu_spec)

    def costs_of(s: Any, t: Any) -> Any:
        return step_costs(s, t, inputs.model, inputs.topology.gpu_spec,
                          precision=sc.precision, compute=cm)

    micro: tuple[MicroBatch, ...] = ()
    if sc.overlap == "tbo":
        halves = split_step(step, inputs.parallelism.token_groups)
        micro = tuple(MicroBatch(t, costs_of(h, t)) for h, t in
                      ((h, step_traffic(inputs, h)) for h in halves))
    return {"traffic": traffic, "costs": costs_of(step, traffic),
            "num_dense_blocks": inputs.model.first_dense_layers, "overlap": sc.overlap,
            "micro_batches": micro,
            "compute_slowdown": compute_slowdown(sc.a2a, inputs.topology)}


def _plan(parts: dict[str, Any], cache: bool = True) -> StepPlan:
    return build_step_plan(parts["traffic"], parts["costs"], parts["num_dense_blocks"],
                           overlap=parts["overlap"], micro_batches=parts["micro_batches"],
                           compute_slowdown=parts["compute_slowdown"], cache=cache)


_COSTS = {"attention": "attention", "router": "router", "experts": "experts",
          "shared_experts": "shared_experts", "dense_ffn": "dense_ffn", "lm_head": "lm_head"}


def assert_values_are_the_steps(plan: StepPlan, parts: dict[str, Any]) -> None:
    """Every operation of a one-batch plan carries its own block's figures, read straight from
    the step's traffic and costs."""
    traffic, costs = parts["traffic"], parts["costs"]
    matrices = {"dispatch": traffic.dispatch_bytes, "combine": traffic.combine_bytes,
                "moe_tp_gather": traffic.moe_tp_gather_bytes,
                "moe_tp_scatter": traffic.moe_tp_scatter_bytes}
    for op in plan.ops:
        layer = op.block - parts["num_dense_blocks"]
        if isinstance(op, Compute):
            cost = getattr(costs, _COSTS[op.name])
            for name in ("time_s", "flops", "bytes_moved"):
                want = np.asarray(getattr(cost, name), dtype=np.float64)
                want = want[layer] if op.name == "experts" else want
                assert np.array_equal(getattr(op, name), want), (op.name, op.block, name)
        elif isinstance(op, Exchange):
            want = traffic.sp_bytes if op.name == "sp_exchange" else matrices[op.name][layer]
            assert np.array_equal(op.bytes_matrix, want), (op.name, op.block)
        elif isinstance(op, Collective) and op.name.startswith("attn_"):
            kind = "reducescatter" if op.name == "attn_reduce_scatter" else "allgather"
            assert op.size_bytes == tuple(float(c.buffer_bytes) for c in
                                          traffic.attn_collectives if c.op == kind)
        elif isinstance(op, Collective):
            own = np.diag(matrices[op.name][layer]).astype(np.float64)
            assert op.size_bytes == tuple(float(own[list(g)].sum()) for g in op.groups)


SHAPES = [
    # (scenario fields, phase)
    ({"placement": "EP8"}, "decode"),
    ({"placement": "EP8"}, "prefill"),
    ({"placement": "TP2xEP4"}, "decode"),  # attention-TP rings and the MoE-TP gather
    ({"placement": "TP8"}, "decode"),  # no all-to-all at all
    ({"placement": "SP8", "phase": "prefill"}, "prefill"),  # the SP exchange
    ({"placement": "EP8", "overlap": "shared", "model": "deepseek-v3",
      "weight_dtype": "fp8"}, "decode"),  # dense blocks, shared experts beside the dispatch
    ({"placement": "EP8", "overlap": "tbo"}, "decode"),
    ({"placement": "EP8", "overlap": "tbo", "a2a": "deepep-normal"}, "decode"),
    ({"placement": "EP8", "a2a": "deepep-ll"}, "decode"),
    ({"placement": "EP8", "a2a": "allgather"}, "prefill"),
    ({"placement": "EP4xDP2", "a2a": "allgather"}, "decode"),
]


@pytest.mark.parametrize(("fields", "phase"), SHAPES)
def test_templated_plan_equals_a_fresh_one(fields: dict[str, Any], phase: str) -> None:
    """A plan filled from a kept template (written for an earlier step of the same shape) has
    the operations, fields and arrays of one written afresh through the constructors."""
    sc = Scenario(**{"topology": "dgx-h100", "batch": 16, "context": 256, **fields})
    plan_module._TEMPLATES.clear()
    first = _step_parts(sc, phase, 0)
    _plan(first)  # keeps the template
    assert len(plan_module._TEMPLATES) == 1
    later = _step_parts(sc, phase, 3) if phase == "decode" else first
    kept = _plan(later)
    assert_plans_equal(kept, _plan(later, cache=False))
    if sc.overlap != "tbo":
        assert_values_are_the_steps(kept, later)
    assert len(plan_module._TEMPLATES) <= 2
    # and it times the same
    topo = load_topology("dgx-h100")
    a = execute(kept, topo, "analytic")
    b = execute(_plan(later, cache=False), topo, "analytic")
    assert np.array_equal(a.end_s, b.end_s, equal_nan=True)


def test_a_step_of_another_shape_gets_its_own_template() -> None:
    """A layer whose tokens all stay on their rank has no dispatch: a plan of that step is not
    the template of a step where every layer sends (and equals its fresh plan)."""
    sc = Scenario(placement="EP8", topology="dgx-h100", batch=16, context=256)
    parts = _step_parts(sc, "decode")
    plan_module._TEMPLATES.clear()
    sending = _plan(parts)
    traffic = parts["traffic"]
    local = traffic.dispatch_bytes.copy()
    local[2] = np.diag(np.diag(local[2]) + local[2].sum(axis=1) - np.diag(local[2]))
    changed = {**parts, "traffic": dataclasses.replace(traffic, dispatch_bytes=local)}
    quiet = _plan(changed)
    assert len(plan_module._TEMPLATES) == 2
    assert len(quiet.ops) == len(sending.ops) - 2
    assert [op.name for op in quiet.ops if op.block == 2] == ["attention", "router", "experts"]
    assert_plans_equal(quiet, _plan(changed, cache=False))


# ---- protocol resolution: vectorised equals scalar ------------------------------------------

TOPOLOGIES = ["dgx-h100", "h100-2node-ib", "rtx4090-4x-pcie", "l40s-8x-pcie", "hgx-a100"]
SIZES = np.array([0.0, 1.0, 100.0, 16384.0, 16385.0, 7 * 16384.0, 7 * 16384.0 + 1, 1e5, 1e6,
                  3.3e7, 1e9])


@pytest.mark.parametrize("name", TOPOLOGIES)
def test_vectorised_alltoall_terms_equal_the_scalar_ones(name: str) -> None:
    """Delay and wire factor of many exchanges at once equal one call per exchange, on groups
    of 1, 2, 4 and every GPU, with and without a launch override, across the LL/Simple cut."""
    topo = load_topology(name)
    for ranks in [(0,), (0, 1), tuple(range(min(4, topo.num_gpus))), tuple(range(topo.num_gpus))]:
        for launch in (None, 3e-6):
            delay, wire = alltoall_delays_and_wires(topo, ranks, SIZES, launch)
            want = np.array([alltoall_delay_and_wire(topo, ranks, float(b), launch)
                             for b in SIZES])
            assert np.array_equal(delay, want[:, 0]), (ranks, launch)
            assert np.array_equal(wire, want[:, 1]), (ranks, launch)


@pytest.mark.parametrize("name", ["dgx-h100", "h100-2node-ib"])
def test_vectorised_exchange_terms_equal_the_scalar_ones(name: str) -> None:
    """Every implementation, dispatch and combine, within and across nodes."""
    topo = load_topology(name)
    world = topo.num_gpus
    runs = [(impl, kind) for impl in ("direct", *DEEPEP) for kind in ("dispatch", "combine")]
    runs = runs * 2
    rng = np.random.default_rng(1)
    matrices = rng.integers(0, 3, (len(runs), world, world)) * 1e5
    matrices[: len(runs) // 2, :, world // 2:] = 0  # half of them stay on their node (if 2)
    across = crosses_nodes_each(topo, matrices)
    assert across.tolist() == [crosses_nodes(topo, m) for m in matrices]
    busiest = rng.random(len(runs)) * 1e6
    for launch in (None, 2e-6):
        delay, wire = exchange_delays_and_wires(topo, runs, range(world), busiest, launch, across)
        for i, (impl, kind) in enumerate(runs):
            assert (delay[i], wire[i]) == exchange_delay_and_wire(
                topo, impl, kind, range(world), float(busiest[i]), launch, bool(across[i]))


def test_protocol_facts_follow_a_changed_spec() -> None:
    """The kept per-topology terms are the topology's own: another topology object with other
    protocol costs gets its own, not the first one's."""
    fast = load_topology("dgx-h100")
    from moesim.inputs.topology import build_topology

    protocols = dict(fast.spec.protocols)
    protocols["Simple"] = protocols["Simple"].model_copy(update={"launch_s": 1e-3})
    slow_spec = fast.spec.model_copy(update={"protocols": protocols})
    slow = build_topology(slow_spec, source="test")
    size = np.array([1e6])
    fast_delay = alltoall_delays_and_wires(fast, range(8), size)[0][0]
    slow_delay = alltoall_delays_and_wires(slow, range(8), size)[0][0]
    assert slow_delay > fast_delay
    assert slow_delay == alltoall_delay_and_wire(slow, range(8), 1e6)[0]


# ---- the backend: vectorised chain, pair drains, kept collectives ---------------------------


def _chain_reference(plan: StepPlan, comm_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The chain one operation at a time."""
    start = np.empty((len(plan.ops), plan.world))
    end = np.empty_like(start)
    now = np.zeros(plan.world)
    for index, op in enumerate(plan.ops):
        start[index] = now
        now = now + op.time_s if isinstance(op, Compute) else now.max() + comm_s[index]
        end[index] = now
    return start, end


@pytest.mark.parametrize(("fields", "phase"), SHAPES[:5])
def test_vectorised_chain_equals_the_step_by_step_one(fields: dict[str, Any], phase: str
                                                       ) -> None:
    """Segment by segment equals operation by operation, and the general graph walk."""
    sc = Scenario(**{"topology": "dgx-h100", "batch": 16, "context": 256, **fields})
    plan = _plan(_step_parts(sc, phase))
    assert plan.layout.chain
    topo = load_topology("dgx-h100")
    comm_s = analytic_backend._comm_durations(plan, topo, build_route_table(topo, 8), None)
    start, end = analytic_backend._chain_times(plan, comm_s)
    ref_start, ref_end = _chain_reference(plan, comm_s)
    np.testing.assert_allclose(start, ref_start, rtol=1e-13, atol=0)
    np.testing.assert_allclose(end, ref_end, rtol=1e-13, atol=0)
    graph_start, graph_end = analytic_backend._graph_times(plan, comm_s)
    np.testing.assert_allclose(end, graph_end, rtol=1e-13, atol=0)
    # the durations too, which the per-phase figures sum
    np.testing.assert_allclose(end - start, ref_end - ref_start, rtol=1e-9, atol=1e-18)


def test_chain_of_a_barrier_first_and_computes_only() -> None:
    """A chain that starts with a communication, and one without any."""
    b = PlanBuilder(2)
    b.exchange("dispatch", "dispatch", 0, np.array([[0.0, 1e6], [2e6, 0.0]]))
    b.compute("experts", "experts", 0, "grouped_moe", np.array([1e-5, 3e-5]), np.zeros(2),
              np.zeros(2))
    b.exchange("combine", "combine", 0, np.array([[0.0, 2e6], [1e6, 0.0]]))
    plan = b.plan(1, 0)
    only = PlanBuilder(2)
    for i in range(3):
        only.compute("attention", "attention", 0, "attention", np.array([1e-6, 2e-6 * i]),
                     np.zeros(2), np.zeros(2))
    topo = load_topology("dgx-h100")
    for p in (plan, only.plan(1, 0)):
        comm_s = analytic_backend._comm_durations(p, topo, build_route_table(topo, 2), None)
        got = analytic_backend._chain_times(p, comm_s)
        want = _chain_reference(p, comm_s)
        np.testing.assert_allclose(got[0], want[0], rtol=1e-14, atol=0)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-14, atol=0)


@pytest.mark.parametrize("name", ["dgx-h100", "h100-2node-ib", "rtx4090-4x-pcie"])
@pytest.mark.parametrize("count", [1, 7, 8, 64])
def test_pair_drains_equal_the_route_tables(name: str, count: int) -> None:
    """Per pair the worst link's drain, by element-wise maxima or the table's reduction."""
    topo = load_topology(name)
    routes = build_route_table(topo, topo.num_gpus)
    drain = np.random.default_rng(count).random((count, len(routes.links.edges)))
    assert np.array_equal(analytic_backend._pair_drain_s(routes, drain),
                          routes.pair_drain_s(drain))


def test_kept_collective_times_are_the_topologys_own() -> None:
    """A collective's seconds are kept per topology object: equal to a fresh computation, and
    another topology with the same call gets its own."""
    a100, h100 = load_topology("hgx-a100"), load_topology("dgx-h100")
    op = Collective(name="attn_all_gather", phase="moe_comm", block=0, ranks=tuple(range(8)),
                    stream="comm", op="allgather", groups=(tuple(range(8)),),
                    size_bytes=(8e6,))
    analytic_backend._COLLECTIVES.clear()
    first = analytic_backend._kept_collective_s(a100, op, 8, None).copy()
    assert np.array_equal(first, analytic_backend._collective_s(a100, op, 8, None))
    assert np.array_equal(analytic_backend._kept_collective_s(a100, op, 8, None), first)
    assert len(analytic_backend._COLLECTIVES[a100]) == 1
    other = analytic_backend._kept_collective_s(h100, op, 8, None)
    assert np.array_equal(other, analytic_backend._collective_s(h100, op, 8, None))
    assert not np.array_equal(other, first)


# ---- the timeline's figures: vectorised equals per operation --------------------------------


def _timeline_reference(t: StepTimeline) -> dict[str, np.ndarray]:
    plan = t.plan
    phase = {name: i for i, name in enumerate(PHASES)}
    phase_s = np.zeros((plan.num_blocks, plan.world, len(PHASES)))
    block_end = np.zeros((plan.num_blocks, plan.world))
    lm_head = np.zeros(plan.world)
    duration = t.end_s - t.start_s
    for index, op in enumerate(plan.ops):
        ranks = list(op.ranks)
        if op.phase in phase:
            phase_s[op.block, ranks, phase[op.phase]] += duration[index, ranks]
        if op.block < plan.num_blocks:
            block_end[op.block, ranks] = np.maximum(block_end[op.block, ranks],
                                                    t.end_s[index, ranks])
        if op.phase == "lm_head":
            lm_head[ranks] += duration[index, ranks]
    return {"phase_s": phase_s, "block_end_s": block_end, "lm_head_s": lm_head}


@pytest.mark.parametrize(("fields", "phase"), [SHAPES[2], SHAPES[5], SHAPES[6]])
def test_timeline_figures_equal_per_operation_sums(fields: dict[str, Any], phase: str) -> None:
    """Per-phase seconds, block ends and LM head of chains, overlapped plans and plans whose
    collectives run on some ranks only, exactly as summed operation by operation."""
    sc = Scenario(**{"topology": "dgx-h100", "batch": 16, "context": 256, **fields})
    plan = _plan(_step_parts(sc, phase))
    timeline = execute(plan, load_topology("dgx-h100"), "analytic")
    want = _timeline_reference(timeline)
    for name, value in want.items():
        assert np.array_equal(getattr(timeline, name), value), name
    rows = timeline.per_layer()
    ends = want["block_end_s"]
    starts = np.concatenate((np.zeros((1, plan.world)), ends[:-1]))
    for block, row in enumerate(rows):
        assert row["time_s"] == float((ends[block] - starts[block]).max())
        assert row["phase_max_s"] == {
            n: float(want["phase_s"][block, :, i].max()) for i, n in enumerate(PHASES)}


def test_partial_rank_operations_count_only_their_ranks(eight_gpu_switch: Topology) -> None:
    """A collective of ranks 0-3 only: the other ranks' phase seconds and block ends ignore it."""
    b = PlanBuilder(8)
    b.compute("attention", "attention", 0, "attention", np.full(8, 1e-5), np.zeros(8),
              np.zeros(8))
    b.add(Collective(name="attn_reduce_scatter", phase="attn_comm", block=0,
                     ranks=(0, 1, 2, 3), stream="comm", op="reducescatter",
                     groups=((0, 1, 2, 3),), size_bytes=(4e6,)))
    b.compute("lm_head", "lm_head", 1, "lm_head", np.full(8, 2e-6), np.zeros(8), np.zeros(8))
    timeline = execute(b.plan(1, 0), eight_gpu_switch, "analytic")
    want = _timeline_reference(timeline)
    for name, value in want.items():
        assert np.array_equal(getattr(timeline, name), value), name
    assert timeline.phase_s[0, 5, PHASES.index("attn_comm")] == 0.0
    assert timeline.phase_s[0, 1, PHASES.index("attn_comm")] > 0.0


# ---- costs: GEMMs timed together equal one at a time ----------------------------------------


def test_gemms_timed_together_equal_one_at_a_time() -> None:
    """`gemm_time` over stacked shapes gives, bit for bit, each GEMM's own time."""
    gpu = load_topology("dgx-h100").gpu_spec
    cm = compute_model("vllm", gpu)
    curves = cm.curves("gemm")
    assert curves is not None
    m = np.array([[0, 1, 7, 64, 300, 4096, 8192, 20000]], dtype=np.float64)
    shapes = [(14336 * 2, 4096, 2.0), (4096, 14336, 2.0), (8, 4096, 2), (32000, 4096, 1.0),
              (6144, 4096, 1.0 + 4 / (128 * 128))]
    together = gemm_time(curves, gpu, m=np.repeat(m, len(shapes), axis=0),
                         n=np.array([[s[0]] for s in shapes]),
                         k=np.array([[s[1]] for s in shapes]),
                         weight_bytes=np.array([[s[2]] for s in shapes], dtype=np.float64),
                         act_bytes=2, peak_flops_per_s=cm.peak("bf16"))
    for row, (n, k, wb) in zip(together, shapes, strict=True):
        alone = gemm_time(curves, gpu, m=m[0], n=n, k=k, weight_bytes=wb, act_bytes=2,
                          peak_flops_per_s=cm.peak("bf16"))
        assert np.array_equal(row, alone)


# ---- whole evaluations: the caches change nothing -------------------------------------------


def _clear_kept() -> None:
    plan_module._TEMPLATES.clear()
    analytic_backend._COLLECTIVES.clear()
    analytic_backend._COLUMNS.clear()


POINTS = [
    {"placement": "EP8", "topology": "dgx-h100", "batch": 8, "context": 1024},
    {"placement": "TP2xEP4", "topology": "hgx-a100", "batch": 16, "context": 256},
    {"placement": "EP4", "topology": "rtx4090-4x-pcie", "batch": 4, "context": 4096,
     "weight_dtype": "int4"},
    {"placement": "EP8", "topology": "h100-2node-ib", "batch": 32, "context": 256},
    {"placement": "TP8", "topology": "l40s-8x-pcie", "batch": 2, "context": 1024},
    {"placement": "EP8", "topology": "dgx-h100", "batch": 8, "context": 1024,
     "a2a": "deepep-ll", "overlap": "tbo"},
]


def test_sweep_points_are_the_same_with_and_without_kept_state() -> None:
    """Points evaluated one after another with one cache (traffic, templates, protocol terms,
    collectives kept across them, in two orders) equal each evaluated from nothing."""
    def fresh(fields: dict[str, Any]) -> dict[str, Any]:
        _clear_kept()
        return evaluate(Scenario(**fields), cache=EvaluationCache()).to_json()

    alone = [fresh(p) for p in POINTS]
    for order in (POINTS, POINTS[::-1]):
        cache = EvaluationCache()
        shared = {id(p): evaluate(Scenario(**p), cache=cache).to_json() for p in order}
        for point, want in zip(POINTS, alone, strict=True):
            assert shared[id(point)] == want
