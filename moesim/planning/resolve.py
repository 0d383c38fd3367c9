"""Resolving a Scenario: the one place that loads and checks what it names.

`Resolver.inputs(scenario)` loads the model (a preset, a file or an inline mapping), the trace
(a bundled name or an .npz; cut to `trace_tokens` tokens and `layers` MoE layers when asked),
the layout, the expert placement (default contiguous) and the topology, and checks that they
agree. A Resolver made with `cache=True` loads each named file once, for a sweep worker or a
comparison that evaluates many scenarios; the default loads afresh every time.

A scenario that leaves `trace` at its default (the bundled real Mixtral-8x7B trace) with a model
of another MoE depth, expert count or top-k runs on a synthetic trace of the model's shape
(`moesim.trace.fallback`: the real trace's fitted statistics mapped onto it), and its inputs
carry a note saying so. A trace the scenario names must fit the model.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from moesim.errors import PlacementError, TraceError
from moesim.inputs.config import ExpertPlacementSpec, Scenario, load_model_file, parse_model
from moesim.inputs.model_files import load_model
from moesim.inputs.models import ModelSpec, model_spec_from_mapping
from moesim.trace.bundled import BUNDLED_PREFIX, named_trace
from moesim.trace.fallback import SyntheticFallback, shape_mismatch, synthetic_fallback
from moesim.trace.format import RouterTrace
from moesim.traffic.balance import Balance, balanced_placement, expert_load
from moesim.traffic.experts import ExpertPlacement, contiguous_placement, placement_from_spec
from moesim.traffic.placement import Parallelism, parse_placement
from moesim.traffic.traffic import check_trace_fits_model

if TYPE_CHECKING:
    from moesim.engine.routes import RouteTable
    from moesim.inputs.topology import Topology

__all__ = ["RunInputs", "Resolver", "resolve_inputs", "parse_layout", "DEFAULT_TRACE",
           "FALLBACK_SEED", "MAX_TRAFFIC_ENTRIES", "check_world"]

T = TypeVar("T")
# Traces can be large (a 1M-token trace is ~100 MB); a caching Resolver keeps this many.
_TRACES_KEPT = 4
DEFAULT_TRACE: str = Scenario.model_fields["trace"].default
FALLBACK_SEED = 0  # seed of the synthetic trace a model the default trace does not fit runs on
# Entries of one [MoE layers, world, world] traffic matrix (dispatch, combine, MoE-TP gather:
# 8 bytes an entry, several held at once, plus the engine's rank-pair routes and flows):
# 2**27 entries is 1 GiB a matrix, a world of 2048 ranks at 32 MoE layers (Mixtral) or 1483 at
# 61 (DeepSeek-V3), far beyond the expert-parallel groups MoE models are served on (EP 8-320).
# A larger layout is refused before its matrices are allocated.
MAX_TRAFFIC_ENTRIES = 1 << 27


@dataclass(frozen=True)
class RunInputs:
    """A scenario's inputs, loaded and checked against each other."""

    scenario: Scenario
    model: ModelSpec
    trace: RouterTrace
    trace_source: str
    parallelism: Parallelism
    experts: ExpertPlacement
    topology: Topology | None
    gpus_per_node: int
    notes: tuple[str, ...] = ()  # what the inputs rest on (a synthetic stand-in trace)
    balance: Balance | None = None  # how the expert placement was balanced (eplb)


def parse_layout(spec: str | dict[str, int]) -> Parallelism:
    """A preset name (`EP4xDP2`) or a mapping of explicit product-form sizes."""
    if isinstance(spec, str):
        return parse_placement(spec)
    return parse_model(Parallelism, dict(spec), "scenario field 'placement'")


class Resolver:
    """Loads what scenarios name; with `cache=True` each named thing only once."""

    def __init__(self, cache: bool = False) -> None:
        self._memo: dict[Any, Any] | None = {} if cache else None
        self._traces: OrderedDict[str, tuple[RouterTrace, str]] = OrderedDict()

    def _once(self, key: Any, make: Callable[[], T]) -> T:
        if self._memo is None:
            return make()
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]  # type: ignore[no-any-return]

    def model(self, spec: str | dict[str, Any]) -> ModelSpec:
        """A preset, model file or inline mapping of ModelSpec fields."""
        if isinstance(spec, dict):
            key = ("model", json.dumps(spec, sort_keys=True))
            return self._once(key, lambda: model_spec_from_mapping(
                dict(spec), "scenario field 'model'"))
        return self._once(("model", spec), lambda: load_model(spec))

    def trace(self, spec: str) -> tuple[RouterTrace, str]:
        """A bundled or .npz trace and its source (a caching Resolver keeps the last few)."""
        if self._memo is None:
            return named_trace(spec)
        if spec not in self._traces:
            self._traces[spec] = named_trace(spec)
            while len(self._traces) > _TRACES_KEPT:
                self._traces.popitem(last=False)
        self._traces.move_to_end(spec)
        return self._traces[spec]

    def synthetic_trace(self, model: ModelSpec, seed: int = FALLBACK_SEED) -> SyntheticFallback:
        """A synthetic trace of the model's MoE shape from the default trace's statistics
        (`moesim.trace.fallback`), made once per (shape, seed) by a caching Resolver."""
        shape = (model.num_moe_layers, model.num_experts, model.top_k)
        return self._once(("synthetic", *shape, seed),
                          lambda: synthetic_fallback(*shape, seed=seed,
                                                     name=DEFAULT_TRACE[len(BUNDLED_PREFIX):]))

    def layout(self, spec: str | dict[str, int]) -> Parallelism:
        """The layout a preset name or product-form mapping describes."""
        return self._once(("layout", json.dumps(spec, sort_keys=True)), lambda: parse_layout(spec))

    def topology(self, spec: str) -> Topology:
        """A topology preset or YAML file, built."""
        from moesim.inputs.topology import load_topology

        return self._once(("topology", spec), lambda: load_topology(spec))

    def routes(self, topology: Topology, world: int) -> RouteTable:
        """Every rank pair's routes among the first `world` GPUs of `topology`."""
        from moesim.engine.routes import build_route_table

        return self._once(("routes", id(topology), world),
                          lambda: build_route_table(topology, world))

    def expert_placement(
        self, spec: str | ExpertPlacementSpec | None, model: ModelSpec, par: Parallelism
    ) -> ExpertPlacement:
        """The scenario's expert placement (a file or inline), else the contiguous one."""
        layers = model.num_moe_layers
        if spec is None:
            try:
                return contiguous_placement(model.num_experts, par.moe_ep, layers)
            except PlacementError as exc:
                raise PlacementError(f"placement {par.label}: {exc}") from None
        if isinstance(spec, str):
            path = spec
            source = f"expert placement file {path}"
            spec = self._once(("experts", path), lambda: load_model_file(
                ExpertPlacementSpec, path, "expert placement"))
        else:
            source = "scenario field 'expert_placement'"
        return placement_from_spec(spec, num_experts=model.num_experts, moe_ep=par.moe_ep,
                                   num_layers=layers, source=source)

    def inputs(self, scenario: Scenario) -> RunInputs:
        """Load the model, trace, layout, expert placement and topology a scenario names."""
        model = self.model(scenario.model)
        trace, source = self.trace(scenario.trace)
        notes: tuple[str, ...] = ()
        explicit = scenario.trace != DEFAULT_TRACE
        if not explicit and shape_mismatch(trace, model.num_moe_layers, model.num_experts,
                                           model.top_k):
            fallback = self.synthetic_trace(model)
            trace, source, notes = fallback.trace, fallback.source, (fallback.note,)
        if scenario.layers is not None:
            model, trace = _first_layers(model, trace, scenario.layers)
        if explicit:
            _check_named_trace(trace, model)
        if scenario.trace_tokens is not None:
            if scenario.trace_tokens > trace.num_tokens:
                raise TraceError(f"trace_tokens {scenario.trace_tokens} exceeds the "
                                 f"{trace.num_tokens} tokens of trace {source}")
            trace = trace.select_tokens(np.arange(scenario.trace_tokens))
        par = self.layout(scenario.placement)
        check_world(par, trace.num_layers)
        topology = None
        gpus_per_node = par.world
        if scenario.topology:
            topology = self.topology(scenario.topology)
            if topology.num_gpus < par.world:
                raise PlacementError(
                    f"placement {par.label} needs {par.world} GPUs but {scenario.topology} has "
                    f"{topology.num_gpus}; pick a smaller layout or a larger topology"
                )
            gpus_per_node = min(topology.gpus_per_node, par.world)
        balance = None
        if scenario.eplb != "none":
            balance = self.balance(scenario, model, trace, par, gpus_per_node)
            experts = balance.placement
            notes += (balance_note(balance, scenario, trace),)
        else:
            experts = self.expert_placement(scenario.expert_placement, model, par)
        return RunInputs(scenario, model, trace, source, par, experts, topology, gpus_per_node,
                         notes, balance)

    def balance(self, scenario: Scenario, model: ModelSpec, trace: RouterTrace,
                par: Parallelism, gpus_per_node: int) -> Balance:
        """The EPLB placement of the scenario: load over the window's trace tokens."""
        window = scenario.eplb_window or trace.num_tokens
        if window > trace.num_tokens:
            raise TraceError(f"eplb_window {window} exceeds the {trace.num_tokens} tokens of the "
                             "trace; give at most that many (or omit it: the whole trace)")
        key = ("balance", scenario.eplb, scenario.redundant_experts, window, scenario.trace,
               scenario.trace_tokens, scenario.layers, model.model_dump_json(), par.label,
               gpus_per_node)

        def make() -> Balance:
            load = expert_load(trace.experts[:, :window], model.num_experts)
            placement = balanced_placement(load, model, par, policy=scenario.eplb,
                                           redundant=scenario.redundant_experts,
                                           gpus_per_node=gpus_per_node)
            return Balance(scenario.eplb, scenario.redundant_experts, window, placement)

        return self._once(key, make)


def balance_note(balance: Balance, scenario: Scenario, trace: RouterTrace) -> str:
    """What an EPLB placement rests on: the window its load came from."""
    whole = balance.window_tokens == trace.num_tokens
    where = ("all the trace's tokens, which the steps replay: an oracle placement (give "
             "--eplb-window N to fit it on the first N tokens only)" if whole else
             f"the trace's first {balance.window_tokens} of {trace.num_tokens} tokens")
    return (f"eplb: {balance.policy} placement of {trace.experts.shape[0]} MoE layers with "
            f"{balance.redundant} redundant expert slots, from the expert load of {where}")


def check_world(par: Parallelism, layers: int) -> None:
    """Refuse a layout whose per-layer rank-pair traffic exceeds MAX_TRAFFIC_ENTRIES."""
    entries = max(layers, 1) * par.world * par.world
    if entries > MAX_TRAFFIC_ENTRIES:
        raise PlacementError(
            f"placement {par.label}: a world of {par.world:,} ranks has {par.world:,} x "
            f"{par.world:,} rank pairs x {layers} MoE layers = {entries:.3g} traffic entries, "
            f"above the {MAX_TRAFFIC_ENTRIES:,} moesim holds per matrix (8 bytes each); use a "
            "layout of fewer ranks (a replica: moesim's figures are per replica) or fewer "
            "layers (--layers)")


def _check_named_trace(trace: RouterTrace, model: ModelSpec) -> None:
    """A trace the scenario names must fit the model; the error says the default would not."""
    try:
        check_trace_fits_model(trace, model)
    except TraceError as exc:
        if trace.num_tokens == 0:
            raise
        raise TraceError(f"{exc}; or omit --trace (scenario field 'trace') to run on a "
                         "synthetic trace of the model's shape fitted to the bundled "
                         "Mixtral-8x7B statistics") from None


def _first_layers(
    model: ModelSpec, trace: RouterTrace, layers: int
) -> tuple[ModelSpec, RouterTrace]:
    """The model and trace cut to their first `layers` MoE layers (dense blocks kept)."""
    if layers > model.num_moe_layers or layers > trace.num_layers:
        raise TraceError(f"layers {layers} exceeds the model's {model.num_moe_layers} or the "
                         f"trace's {trace.num_layers} MoE layers; give at most the smaller")
    model = model.model_copy(update={"num_layers": model.first_dense_layers + layers})
    return model, trace.first_layers(layers)


def resolve_inputs(scenario: Scenario, resolver: Resolver | None = None) -> RunInputs:
    """`Resolver.inputs` with a fresh (non-caching) resolver unless one is given."""
    return (resolver or Resolver()).inputs(scenario)
