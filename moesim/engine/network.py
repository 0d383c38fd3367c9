"""Flow-level network: transfers are fluid flows that share directed links max-min fairly.

A *flow* carries `size_bytes` along a path of directed edges of a topology graph. It first
waits the path latency (sum of the edges' `latency_s`), then streams at a rate set by
max-min fair sharing (progressive filling) over every flow active at that moment. Rates
are recomputed only when a flow starts or ends; a single timer, guarded by a generation
counter, fires at the next predicted completion, so there is no polling and no time step.

The water-filling (`water_fill`) works on a padded `[width, flows]` table of link ids (each
active slot keeps its path's row), so one rate update costs a few numpy gathers and
elementwise reductions over that table per round, without `ufunc.at` scatters.

Event batching. With `time_window_s` = w > 0 (the DES default, `DES_TIME_WINDOW_S`), the timer
ends every flow predicted to end within w of the next completion, at the middle of the first
and the last of those predictions; a flow that becomes ready while the armed timer is at most
w / 2 away joins at that timer's rate update instead of forcing its own. Bound: relative to
the times the rates in force predict, every flow ends at most w / 2 early or late and starts
at most w / 2 late; rates are re-solved at every batch, so the only error carried forward is
that of the moved events (the freed or claimed bandwidth in between). The older
`time_quantum_s` window ends flows only early (up to the quantum), which biases step times
low (-0.7% at 1 us on a DeepSeek-V3 EP64 decode step, where the centred 4 us window is
+0.15% from exact; measurements at `moesim.engine.backends.des.DES_TIME_WINDOW_S`). w = 0 and a
zero quantum give exact max-min event times.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
import simpy

from moesim.errors import TopologyError
from moesim.inputs.graph import DiGraph

__all__ = ["Edge", "Routing", "Links", "FlowGroup", "FlowNetwork", "max_min_fair_rates",
           "water_fill"]

Edge = tuple[str, str]

# Links of frozen (immutable) graphs, indexed once per graph.
_LINKS_OF_FROZEN: weakref.WeakKeyDictionary[DiGraph, Links] = weakref.WeakKeyDictionary()
# Two bottleneck shares closer than this (relative) are one level: avoids extra rounds
# caused by floating-point noise in cap_left / count.
_SHARE_RTOL = 1e-12
# A flow with this fraction of its bytes (or less) left counts as finished.
_DONE_RTOL = 1e-12
# Max-min solutions a network keeps for reuse, per mix of paths (cleared when full), while it
# has seen at most _SOLVED_MAX_PATHS paths (8 GPUs use ~100; on large fabrics mixes rarely recur).
_SOLVED_MAX = 4096
_SOLVED_MAX_PATHS = 4096


class Routing(Protocol):
    """What the network and collectives need from a topology: the graph and equal-cost routes."""

    graph: DiGraph

    def routes(self, src_rank: int, dst_rank: int) -> list[list[Edge]]:
        """Equal-cost shortest paths from one GPU rank to another, as lists of directed edges."""
        ...


def max_min_fair_rates(
    flow_of_pair: np.ndarray,
    link_of_pair: np.ndarray,
    num_flows: int,
    capacity_bytes_per_s: np.ndarray,
) -> np.ndarray:
    """Max-min fair rate of each flow; pair k says flow `flow_of_pair[k]` crosses `link_of_pair[k]`.

    Flows that cross no link get `inf`. Lays the pairs out as a padded flows x links table and
    calls `water_fill` (a link repeated on a flow's path counts once).
    """
    flows = np.asarray(flow_of_pair, dtype=np.int64)
    links = np.asarray(link_of_pair, dtype=np.int64)
    capacity = np.asarray(capacity_bytes_per_s, dtype=float)
    rates = np.full(num_flows, np.inf)
    if flows.size == 0:
        return rates
    order = np.lexsort((links, flows))
    flows, links = flows[order], links[order]
    distinct = np.ones(flows.size, dtype=bool)
    distinct[1:] = (flows[1:] != flows[:-1]) | (links[1:] != links[:-1])
    flows, links = flows[distinct], links[distinct]
    per_flow = np.bincount(flows, minlength=num_flows)
    crossing = np.flatnonzero(per_flow)
    column = np.cumsum(per_flow) - per_flow
    table = np.full((int(per_flow.max()), num_flows), capacity.size, dtype=np.int64)
    table[np.arange(flows.size) - column[flows], flows] = links
    rates[crossing] = water_fill(table[:, crossing], capacity)
    return rates


def water_fill(table: np.ndarray, capacity_bytes_per_s: np.ndarray,
               weight: np.ndarray | None = None) -> np.ndarray:
    """Max-min fair rates of flows given as a `[width, flows]` table of link ids: column f holds
    the links flow f crosses, each once, padded with `len(capacity)` (a link of infinite
    capacity). Every flow must cross at least one real link.

    Parallel bottleneck algorithm. A link's fair share is its capacity left over its unfixed
    flows. A link whose share is no larger than the share of any link its flows cross is a
    bottleneck of all of them: a link's saturation level never falls below its current share,
    so none of its flows can be frozen lower elsewhere. Each round fixes every such link's
    flows at once (the globally smallest share is always one), removes their rates from the
    other links, and repeats. One round is a few numpy passes over the table (gathers along
    it and elementwise reductions across its rows; no scatter with `ufunc.at`).

    `weight[f]` (optional) makes column f stand for that many flows on the same links (all get
    the column's rate).
    """
    width, num_flows = table.shape
    num_links = np.asarray(capacity_bytes_per_s).size
    cap_left = np.empty(num_links + 1)
    cap_left[:num_links] = capacity_bytes_per_s
    cap_left[num_links] = np.inf
    if weight is None:
        count = np.bincount(table.ravel(), minlength=num_links + 1).astype(float)
    else:
        count = np.bincount(table.ravel(), weights=_rows(weight, width),
                            minlength=num_links + 1)
    np.maximum(count, 1.0, out=count)  # links without flows are never looked up
    rates = np.empty(num_flows)
    ids: np.ndarray | None = None  # flows of `table` (None: all, in order)
    while True:
        share = cap_left / count
        pair_share = share.take(table)  # [W, F]
        flow_min = np.minimum.reduce(pair_share, axis=0)  # tightest share on each flow's path
        # a link is a bottleneck unless one of its flows has a tighter link elsewhere
        tighter = np.where(pair_share > flow_min * (1.0 + _SHARE_RTOL), table, num_links)
        is_bottleneck = np.bincount(tighter.ravel(), minlength=num_links + 1) == 0
        is_bottleneck[num_links] = False
        fixed = np.logical_or.reduce(is_bottleneck.take(table), axis=0)
        fixed_at = fixed.nonzero()[0]
        if fixed_at.size == flow_min.size:
            if ids is None:
                return flow_min
            rates[ids] = flow_min
            return rates
        if ids is None:
            ids = np.arange(num_flows)
        fixed_rate = flow_min.take(fixed_at)
        rates[ids.take(fixed_at)] = fixed_rate
        fixed_links = table.take(fixed_at, axis=1).ravel()
        if weight is None:
            cap_left -= np.bincount(fixed_links, weights=_rows(fixed_rate, width),
                                    minlength=num_links + 1)
            count -= np.bincount(fixed_links, minlength=num_links + 1)
        else:
            fixed_weight = weight.take(fixed_at)
            cap_left -= np.bincount(fixed_links, weights=_rows(fixed_rate * fixed_weight, width),
                                    minlength=num_links + 1)
            count -= np.bincount(fixed_links, weights=_rows(fixed_weight, width),
                                 minlength=num_links + 1)
        np.maximum(cap_left, 0.0, out=cap_left)
        np.maximum(count, 1.0, out=count)
        keep = (~fixed).nonzero()[0]
        table, ids = table.take(keep, axis=1), ids.take(keep)
        if weight is not None:
            weight = weight.take(keep)


def _rows(values: np.ndarray, width: int) -> np.ndarray:
    """`values` repeated `width` times, flat (np.tile's result; ~4x faster on short rows, which
    matters at thousands of solves)."""
    out = np.empty((width, values.size))
    out[...] = values
    return out.reshape(-1)


@dataclass(frozen=True)
class Links:
    """The graph's directed edges as arrays: index, capacity and latency of each link."""

    edges: list[Edge]
    index: dict[Edge, int]
    capacity_bytes_per_s: np.ndarray  # [L]
    latency_s: np.ndarray  # [L]
    bound_by: np.ndarray  # [L] the link whose capacity bounds every flow on this one (itself)

    @classmethod
    def from_graph(cls, graph: DiGraph) -> Links:
        """Index every edge; raise TopologyError if one lacks a positive bandwidth or a latency.
        A frozen graph (a built Topology's) is indexed once and the result reused."""
        frozen = bool(getattr(graph, "frozen", False))
        if frozen and graph in _LINKS_OF_FROZEN:
            return _LINKS_OF_FROZEN[graph]
        links = cls._index(graph)
        if frozen:
            _LINKS_OF_FROZEN[graph] = links
        return links

    @classmethod
    def _index(cls, graph: DiGraph) -> Links:
        edges: list[Edge] = list(graph.edges)
        capacity = np.array([_edge_attr(graph, e, "bandwidth_bytes_per_s") for e in edges])
        latency = np.array([_edge_attr(graph, e, "latency_s") for e in edges])
        bad = ~(np.isfinite(capacity) & (capacity > 0)) | ~(np.isfinite(latency) & (latency >= 0))
        if np.any(bad):
            first = int(np.flatnonzero(bad)[0])
            src, dst = edges[first]
            raise TopologyError(
                f"topology '{graph.graph.get('name', '?')}': link {src}->{dst} has bandwidth "
                f"{float(capacity[first])!r} B/s and latency {float(latency[first])!r} s; every "
                "link needs a finite bandwidth_bytes_per_s > 0 and a finite latency_s >= 0; fix "
                "the topology"
            )
        index = {e: i for i, e in enumerate(edges)}
        capacity, latency = capacity.reshape(-1), latency.reshape(-1)
        return cls(edges, index, capacity, latency, _pass_through_bounds(graph, index, capacity))

    def ids(self, path: Sequence[Edge]) -> np.ndarray:
        """Link indices of a path (a sequence of directed edges)."""
        try:
            return np.array([self.index[(e[0], e[1])] for e in path], dtype=np.int64)
        except KeyError as exc:
            raise TopologyError(f"path uses link {exc.args[0]} which is not in the graph") from None


def _pass_through_bounds(
    graph: DiGraph, index: dict[Edge, int], capacity: np.ndarray
) -> np.ndarray:
    """Per link, the link that bounds it: at a NIC with exactly two neighbours (its GPU and its
    switch) every flow that enters from one leaves to the other (NICs are never endpoints, and
    routes are simple paths), so the two links carry the same flows and the narrower one is the
    only constraint that can bind. The solver drops the wider one (same rates, fewer pairs)."""
    bound = np.arange(capacity.size)
    for node, attrs in graph.nodes(data=True):
        neighbours = set(graph.predecessors(node)) | set(graph.successors(node))
        if attrs.get("kind") != "nic" or len(neighbours) != 2:
            continue
        first, second = sorted(neighbours)
        for src, dst in ((first, second), (second, first)):
            into, out = index.get((src, node)), index.get((node, dst))
            if into is None or out is None:
                continue
            narrow = into if capacity[into] < capacity[out] else out
            bound[into] = bound[out] = narrow
    return bound


class FlowGroup:
    """Flow parts counted per rank: `left[r]` parts touching rank r are still to end."""

    def __init__(
        self, index: int, parts_per_rank: np.ndarray, on_rank_done: Callable[[np.ndarray], None]
    ) -> None:
        self.index = index
        self.left = np.asarray(parts_per_rank, dtype=np.int64).copy()
        self.on_rank_done = on_rank_done


class FlowNetwork:
    """Fluid flows over a directed graph with `bandwidth_bytes_per_s` and `latency_s` per edge."""

    def __init__(
        self,
        env: simpy.Environment,
        graph: DiGraph,
        *,
        time_quantum_s: float = 0.0,
        time_quantum_rel: float = 0.0,
        time_window_s: float = 0.0,
    ) -> None:
        """Index the graph's edges; no flow is active yet.

        `time_quantum_s` > 0 trades exactness for speed: flows predicted to end within that
        long after the next completion end with it (at most that much early), so one rate
        update serves them all. `time_quantum_rel` does the same with a window proportional to
        the time until the next completion (a flow ends at most that fraction of it early),
        which keeps the event count near-constant as the number of flows grows.
        `time_window_s` > 0 batches events in a centred window instead (module doc, "Event
        batching"): each flow ends within half the window of its predicted end, early or late,
        and starts at most half of it late. All 0 (the default) is exact.
        """
        if time_quantum_s < 0 or time_quantum_rel < 0 or time_window_s < 0:
            raise ValueError("time quanta must be >= 0")
        self.env = env
        self.time_quantum_s = time_quantum_s
        self.time_quantum_rel = time_quantum_rel
        self.time_window_s = time_window_s
        self._timer_at: float | None = None  # when the armed (current generation) timer fires
        self.links = Links.from_graph(graph)
        # Paths by number: each distinct link sequence once, its (flow, link) pair links for
        # the solver (bound links, a repeat dropped), bytes it carried; numbers by array id.
        self._number_of_id: dict[int, int] = {}
        self._number_of_bytes: dict[bytes, int] = {}
        self._path_arrays: list[np.ndarray] = []
        self._numbered: list[np.ndarray] = []
        self._pad = len(self.links.edges)  # the padding link id of solver tables
        self._path_table = np.full((16, 1), self._pad, dtype=np.int64)  # [paths, W] (capacity)
        self._path_bytes = np.zeros(16)
        # Reduced rows (`_solve`): a path's narrowest links (its "narrow row", numbered once per
        # distinct link set) and its other links ("wide", padded), by path number.
        self._narrow_of_links: dict[tuple[int, ...], int] = {}
        self._narrow_table = np.full((16, 1), self._pad, dtype=np.int64)  # [narrow rows, Wn]
        self._path_narrow = np.zeros(16, dtype=np.int64)
        self._path_wide = np.full((16, 1), self._pad, dtype=np.int64)  # [paths, Ww]
        self._has_wide = False  # some path has links wider than its narrowest
        self._bound_by_list: list[int] = self.links.bound_by.tolist()
        self._capacity_list: list[float] = self.links.capacity_bytes_per_s.tolist()
        # Slot arrays: one slot per active flow, reused through a free list.
        self._size = np.zeros(0)
        self._remaining = np.zeros(0)
        self._rate = np.zeros(0)
        self._alive = np.zeros(0, dtype=bool)
        self._done_event: list[simpy.Event | None] = []
        self._group_of = np.zeros(0, dtype=np.int64)  # FlowGroup index of a slot, -1: none
        self._src_rank = np.zeros(0, dtype=np.int64)
        self._dst_rank = np.zeros(0, dtype=np.int64)
        self._path_of = np.zeros(0, dtype=np.int64)  # path number of a slot's flow
        self._groups: list[FlowGroup] = []
        self._ranks_done: list[tuple[FlowGroup, np.ndarray]] = []
        self._free_slots: list[int] = []
        self._slot_links = np.zeros((1, 0), dtype=np.int64)  # [W, slots] a slot's path's row
        # slots waiting to join, with their path numbers (arrays, one pair per batch)
        self._pending_slots: list[np.ndarray] = []
        self._pending_numbers: list[np.ndarray] = []
        # max-min solutions by (flows, flow-link pairs): the same pattern recurs every layer
        self._solved: dict[bytes, np.ndarray] = {}
        self._last_update_s = env.now
        self._generation = 0
        self._settle_queued = False
        self.num_flows_started = 0
        self.num_rate_updates = 0


    # ---- public API -------------------------------------------------------------------

    @property
    def link_bytes(self) -> dict[Edge, float]:
        """Bytes each link carries for the flows that have started streaming (once the network
        is idle: all it carried), links with traffic only."""
        totals = np.zeros(len(self.links.edges))
        for number in np.flatnonzero(self._path_bytes).tolist():
            totals[self._path_arrays[number]] += self._path_bytes[number]
        return {self.links.edges[i]: float(b) for i, b in enumerate(totals) if b > 0}

    @property
    def num_active_flows(self) -> int:
        """Flows past their latency and still streaming."""
        return int(self._alive.sum())

    def path_latency_s(self, path: Sequence[Edge]) -> float:
        """Sum of the latencies of the path's links."""
        return float(self.links.latency_s[self.links.ids(path)].sum())

    def transfer(self, path: Sequence[Edge], size_bytes: float) -> simpy.Event:
        """Start one flow now; the event fires (value: finish time) when its last byte arrives."""
        if size_bytes < 0:
            raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
        links = self.links.ids(path)
        done = self.env.event()
        self.num_flows_started += 1
        latency = self.env.timeout(float(self.links.latency_s[links].sum()))
        streams = size_bytes > 0 and links.size > 0

        def after_latency(_ev: simpy.Event) -> None:
            if streams:
                self._enqueue(links, float(size_bytes), done)
            else:
                done.succeed(self.env.now)

        latency.callbacks.append(after_latency)
        return done

    def transfer_multipath(self, paths: Sequence[Sequence[Edge]], size_bytes: float) -> simpy.Event:
        """Split the bytes evenly over equal-cost paths; the event fires when every part is done."""
        if not paths:
            raise ValueError("transfer_multipath needs at least one path")
        if len(paths) == 1:
            return self.transfer(paths[0], size_bytes)
        part = size_bytes / len(paths)
        return self.env.all_of([self.transfer(p, part) for p in paths])

    def start_flows(
        self, flows: Sequence[tuple[Sequence[np.ndarray], float]], done: Sequence[simpy.Event]
    ) -> None:
        """Start many flows now, flow i split evenly over its paths (arrays of link ids from
        `links.ids`); `done[i]` fires when all its parts have arrived.

        The same as calling `transfer_multipath` per flow, with one simpy timeout per distinct
        path latency instead of one per part (the step engine starts a rank's sends this way).
        """
        by_latency: dict[float, list[tuple[np.ndarray, float, simpy.Event]]] = {}
        for (paths, size_bytes), flow_done in zip(flows, done, strict=True):
            self.num_flows_started += len(paths)
            targets = [flow_done] if len(paths) == 1 else _parts_of(self.env, flow_done, len(paths))
            part = float(size_bytes) / len(paths)
            for links, target in zip(paths, targets, strict=True):
                latency_s = float(self.links.latency_s[links].sum())
                by_latency.setdefault(latency_s, []).append((links, part, target))
        for latency_s, parts in by_latency.items():
            self.env.timeout(latency_s).callbacks.append(partial(self._start_after, parts))

    def _start_after(self, parts: list[tuple[np.ndarray, float, simpy.Event]],
                     _event: simpy.Event) -> None:
        """Timeout callback: start `parts` once their path latency has passed."""
        self._start_parts(parts)

    def _start_parts(self, parts: list[tuple[np.ndarray, float, simpy.Event]]) -> None:
        for links, size_bytes, target in parts:
            if size_bytes > 0 and links.size > 0:
                self._enqueue(links, size_bytes, target)
            else:
                target.succeed(self.env.now)

    def open_group(
        self, parts_per_rank: np.ndarray, on_rank_done: Callable[[np.ndarray], None]
    ) -> FlowGroup:
        """A group of flow parts counted per rank: `parts_per_rank[r]` parts start or end at
        rank r; when the last of them ends, `on_rank_done(ranks)` is called with the ranks
        (in rank order) done at that moment. No simpy event is made per part."""
        group = FlowGroup(len(self._groups), parts_per_rank, on_rank_done)
        self._groups.append(group)
        return group

    def start_group_parts(
        self,
        group: FlowGroup,
        src: int | np.ndarray,
        paths: Sequence[np.ndarray],
        sizes: np.ndarray,
        dsts: np.ndarray,
        latency_s: np.ndarray,
    ) -> None:
        """Start parts of `group` now: part i streams `sizes[i]` bytes over link ids `paths[i]`
        from rank `src` (or `src[i]`) to rank `dsts[i]` after its path latency `latency_s[i]`
        (one simpy timeout per distinct latency)."""
        self.start_group_numbered(group, src, self.path_numbers(paths), sizes, dsts, latency_s)

    def path_numbers(self, paths: Sequence[np.ndarray]) -> np.ndarray:
        """The network's numbers of paths given as arrays of link ids (`links.ids`), for
        `start_group_numbered`; the same array objects are looked up fastest."""
        number = self._path_number
        return np.fromiter((number(p) for p in paths), dtype=np.int64, count=len(paths))

    def start_group_numbered(
        self,
        group: FlowGroup,
        src: int | np.ndarray,
        numbers: np.ndarray,
        sizes: np.ndarray,
        dsts: np.ndarray,
        latency_s: np.ndarray,
    ) -> None:
        """`start_group_parts` with the paths given by their numbers (`path_numbers`): callers
        that start the same routes again and again number them once."""
        self.num_flows_started += numbers.size
        srcs = np.broadcast_to(np.asarray(src, dtype=np.int64), dsts.shape)
        first = float(latency_s[0])
        if (latency_s == first).all():  # one latency (a switch, a ring hop): no grouping
            batch = (numbers, sizes, srcs, dsts)
            self.env.timeout(first).callbacks.append(partial(self._group_after, group, batch))
            return
        order = np.argsort(latency_s, kind="stable")  # parts of one latency keep their order
        ordered = latency_s[order]
        bounds = [0, *(np.flatnonzero(ordered[1:] != ordered[:-1]) + 1).tolist(), order.size]
        for begin, end in zip(bounds[:-1], bounds[1:], strict=True):
            pick = order[begin:end]
            batch = (numbers[pick], sizes[pick], srcs[pick], dsts[pick])
            self.env.timeout(float(ordered[begin])).callbacks.append(
                partial(self._group_after, group, batch))

    def _group_after(self, group: FlowGroup,
                     batch: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                     _event: simpy.Event) -> None:
        """Timeout callback: the parts' latency has passed, they join at the next settle."""
        numbers, sizes, srcs, dsts = batch
        slots = self._take_slots(numbers.size)
        self._size[slots] = self._remaining[slots] = sizes
        self._rate[slots] = 0.0
        self._group_of[slots] = group.index
        self._src_rank[slots], self._dst_rank[slots] = srcs, dsts
        self._pending_slots.append(slots)
        self._pending_numbers.append(numbers)
        self._queue_settle()

    def _count_done(self, group: FlowGroup, src: np.ndarray, dst: np.ndarray) -> None:
        """Count parts src -> dst of `group` as ended; queue the ranks that are now done."""
        world = group.left.size
        ended = np.bincount(src, minlength=world) + np.bincount(dst, minlength=world)
        group.left -= ended
        now_done = np.flatnonzero((ended > 0) & (group.left == 0))
        if now_done.size:
            self._ranks_done.append((group, now_done))

    def _report_ranks_done(self) -> None:
        """Tell the groups which of their ranks finished (after the network is consistent)."""
        while self._ranks_done:
            group, ranks = self._ranks_done.pop(0)
            group.on_rank_done(ranks)

    # ---- internals ----------------------------------------------------------------------

    def _enqueue(self, links: np.ndarray, size_bytes: float, done: simpy.Event | None) -> int:
        """A flow has paid its latency: join the active set at the next settle (one per instant)."""
        slot = self._take_slot()
        self._size[slot] = self._remaining[slot] = size_bytes
        self._rate[slot] = 0.0
        self._done_event[slot] = done
        self._group_of[slot] = -1
        self._pending_slots.append(np.array([slot], dtype=np.int64))
        self._pending_numbers.append(np.array([self._path_number(links)], dtype=np.int64))
        self._queue_settle()
        return slot

    def _path_number(self, links: np.ndarray) -> int:
        """The number of a path (link ids); a new path gets the next one."""
        number = self._number_of_id.get(id(links))
        if number is not None:
            return number
        key = links.tobytes()
        number = self._number_of_bytes.get(key)
        if number is None:
            number = len(self._path_arrays)
            self._number_of_bytes[key] = number
            self._path_arrays.append(links)
            self._add_path_row(number, links)
        self._number_of_id[id(links)] = number
        self._numbered.append(links)  # keeps the id from being reused by another array
        return number

    def _add_path_row(self, number: int, links: np.ndarray) -> None:
        """The solver row of a new path: its links, each replaced by the link that bounds it
        (`Links.bound_by`), a repeat dropped, padded."""
        bound_by = self._bound_by_list
        row_ids = sorted({bound_by[link] for link in links.tolist()})
        row = np.array(row_ids, dtype=np.int64)
        rows, width = self._path_table.shape
        if number >= rows or row.size > width:
            grown = np.full((max(rows, 2 * number + 2), max(width, row.size)), self._pad,
                            dtype=np.int64)
            grown[:rows, :width] = self._path_table
            self._path_table = grown
            self._path_bytes = np.concatenate([self._path_bytes, np.zeros(grown.shape[0] - rows)])
        if self._path_table.shape[1] > self._slot_links.shape[0]:
            extra = self._path_table.shape[1] - self._slot_links.shape[0]
            self._slot_links = np.concatenate(
                [self._slot_links, np.full((extra, self._slot_links.shape[1]), self._pad,
                                           dtype=np.int64)])
        self._path_table[number, :row.size] = row
        self._add_reduced_row(number, row_ids)

    def _add_reduced_row(self, number: int, row: list[int]) -> None:
        """Split a new path's solver row (sorted link ids) into its narrowest links (the narrow
        row, numbered by link set) and the others (wide links), for `_solve`."""
        capacity = self._capacity_list
        least = min(capacity[link] for link in row)
        narrow = tuple(link for link in row if capacity[link] <= least)
        wide = [link for link in row if capacity[link] > least]
        if number >= self._path_narrow.size:
            grow = self._path_table.shape[0] - self._path_narrow.size
            self._path_narrow = np.concatenate([self._path_narrow, np.zeros(grow, dtype=np.int64)])
            self._path_wide = np.concatenate(
                [self._path_wide, np.full((grow, self._path_wide.shape[1]), self._pad,
                                          dtype=np.int64)])
        if wide:
            if len(wide) > self._path_wide.shape[1]:
                self._path_wide = _widen(self._path_wide, len(wide), self._pad)
            self._path_wide[number, :len(wide)] = wide
            self._has_wide = True
        narrow_number = self._narrow_of_links.get(narrow)
        if narrow_number is None:
            narrow_number = len(self._narrow_of_links)
            self._narrow_of_links[narrow] = narrow_number
            rows, width = self._narrow_table.shape
            if narrow_number >= rows or len(narrow) > width:
                grown = np.full((max(rows, 2 * narrow_number + 2), max(width, len(narrow))),
                                self._pad, dtype=np.int64)
                grown[:rows, :width] = self._narrow_table
                self._narrow_table = grown
            self._narrow_table[narrow_number, :len(narrow)] = narrow
        self._path_narrow[number] = narrow_number

    def _queue_settle(self) -> None:
        """Settle once at this instant, after everything else due now; with a time window, a
        flow that becomes ready within half the window of the armed timer joins at the timer's
        settle instead (at most that much late, one rate update fewer)."""
        if self._settle_queued:
            return
        timer_at = self._timer_at
        if timer_at is not None and timer_at - self.env.now <= 0.5 * self.time_window_s:
            return  # the armed timer fires (its generation is current) and admits the flow
        self._settle_queued = True
        self.env.timeout(0).callbacks.append(self._on_queued_settle)

    def _take_slots(self, count: int) -> np.ndarray:
        """`count` free slots, in the order `_take_slot` would give them."""
        taken: list[int] = []
        while len(taken) < count:
            if not self._free_slots:
                self._grow()
            chunk = min(count - len(taken), len(self._free_slots))
            taken.extend(reversed(self._free_slots[-chunk:]))
            del self._free_slots[-chunk:]
        return np.array(taken, dtype=np.int64)

    def _take_slot(self) -> int:
        if not self._free_slots:
            self._grow()
        return self._free_slots.pop()

    def _grow(self) -> None:
        """Double the slot arrays; the new slots join the free list."""
        old = self._size.size
        new = max(16, 2 * old)
        self._size = np.concatenate([self._size, np.zeros(new - old)])
        self._remaining = np.concatenate([self._remaining, np.zeros(new - old)])
        self._rate = np.concatenate([self._rate, np.zeros(new - old)])
        self._alive = np.concatenate([self._alive, np.zeros(new - old, dtype=bool)])
        grow = np.full(new - old, -1, dtype=np.int64)
        self._group_of = np.concatenate([self._group_of, grow])
        self._path_of = np.concatenate([self._path_of, grow])
        self._src_rank = np.concatenate([self._src_rank, grow])
        self._dst_rank = np.concatenate([self._dst_rank, grow])
        self._slot_links = np.concatenate(
            [self._slot_links, np.full((self._slot_links.shape[0], new - old), self._pad,
                                       dtype=np.int64)], axis=1)
        self._done_event.extend([None] * (new - old))
        self._free_slots.extend(range(new - 1, old - 1, -1))

    def _on_queued_settle(self, _ev: simpy.Event) -> None:
        self._settle_queued = False
        self._settle(finishing=None)

    def _on_timer(self, generation: int, finishing: np.ndarray, _ev: simpy.Event) -> None:
        if generation == self._generation:  # stale timers (rates changed since) do nothing
            self._settle(finishing=finishing)

    def _settle(self, finishing: np.ndarray | None) -> None:
        """Advance bytes to now, retire finished flows, admit pending ones, re-rate, re-arm."""
        elapsed_s = self.env.now - self._last_update_s
        self._last_update_s = self.env.now
        # only active slots have a non-zero rate (`_rerate` zeroes the rest)
        self._remaining -= self._rate * elapsed_s
        if finishing is not None:
            self._remaining[finishing] = 0.0
        self._retire(np.flatnonzero(self._alive & (self._remaining <= _DONE_RTOL * self._size)))
        self._admit()
        slots = np.flatnonzero(self._alive)
        self._rerate(slots)
        self._arm_timer(slots)
        self._report_ranks_done()

    def _retire(self, slots: np.ndarray) -> None:
        if slots.size == 0:
            return
        self._alive[slots] = False
        self._free_slots.extend(slots.tolist())
        groups = self._group_of[slots]
        ungrouped = groups < 0
        if ungrouped.any():
            for slot in slots[ungrouped].tolist():
                event = self._done_event[slot]
                self._done_event[slot] = None
                assert event is not None
                event.succeed(self.env.now)
        if ungrouped.all():
            return
        grouped, groups = slots[~ungrouped], groups[~ungrouped]
        first = int(groups[0])
        if (groups == first).all():
            self._count_done(self._groups[first], self._src_rank[grouped],
                             self._dst_rank[grouped])
            return
        for index in np.unique(groups).tolist():
            mine = grouped[groups == index]
            self._count_done(self._groups[index], self._src_rank[mine], self._dst_rank[mine])

    def _admit(self) -> None:
        """Pending flows join the active set with their paths' solver rows."""
        if not self._pending_slots:
            return
        if len(self._pending_slots) == 1:
            slots, numbers = self._pending_slots[0], self._pending_numbers[0]
        else:
            slots = np.concatenate(self._pending_slots)
            numbers = np.concatenate(self._pending_numbers)
        self._path_of[slots] = numbers
        np.add.at(self._path_bytes, numbers, self._size[slots])
        self._slot_links[:, slots] = self._path_table[numbers].T
        self._alive[slots] = True
        self._pending_slots.clear()
        self._pending_numbers.clear()

    def _rerate(self, slots: np.ndarray) -> None:
        """Max-min fair rates of the active `slots` (the rest get 0). Flows on the same path get
        the same rate and the rates depend only on how many flows take each path, so a mix of
        paths seen before reuses its solution."""
        self.num_rate_updates += 1
        self._rate[:] = 0.0
        if slots.size == 0:
            return
        paths = self._path_of[slots]
        if len(self._path_arrays) > _SOLVED_MAX_PATHS:  # large fabrics: mixes rarely recur
            self._rate[slots] = self._solve(slots)
            return
        key = np.bincount(paths).tobytes()
        per_path = self._solved.get(key)
        if per_path is None:
            per_path = np.zeros(int(paths.max()) + 1)
            per_path[paths] = self._solve(slots)
            if len(self._solved) >= _SOLVED_MAX:
                self._solved.clear()
            self._solved[key] = per_path
        self._rate[slots] = per_path[paths]

    def _solve(self, slots: np.ndarray) -> np.ndarray:
        """Max-min fair rates of the active flows, in `slots` order.

        Exact reduction (when some path has links wider than its narrowest). Only links that are
        the narrowest of some active flow's path enter the solve, each with all its flows; the
        flows then fall into far fewer distinct link sets (rail fabrics: a NIC pair instead of
        a GPU pair), solved once each with their flow count as weight. The solution is then
        checked on the links left out: if none carries more than its capacity, it is the
        max-min solution of the whole problem (it is feasible, and every flow still has a
        saturated link on which no flow gets more: max-min fairness, which has one solution);
        otherwise the overloaded links join and it is solved again.
        """
        capacity = self.links.capacity_bytes_per_s
        if not self._has_wide:
            return water_fill(self._slot_links.take(slots, axis=1), capacity)
        pad = self._pad
        paths = self._path_of.take(slots)
        narrow_of = self._path_narrow.take(paths)
        num_narrow = len(self._narrow_of_links)
        included = np.zeros(pad + 1, dtype=bool)
        included[self._narrow_table[np.flatnonzero(np.bincount(narrow_of))]] = True
        wide = self._path_wide.take(paths, axis=0)  # [F, Ww]
        wide_flat = wide.ravel()
        while True:
            included[pad] = False
            has_included_wide = np.logical_or.reduce(included.take(wide), axis=1)
            row_of = np.where(has_included_wide, paths + num_narrow, narrow_of)
            per_row = np.bincount(row_of)
            rows = np.flatnonzero(per_row)
            split = int(np.searchsorted(rows, num_narrow))
            if split == rows.size:
                table = self._narrow_table.take(rows, axis=0).T
            else:
                full = self._path_table.take(rows[split:] - num_narrow, axis=0)
                full = np.where(included.take(full), full, pad)
                table = np.full((max(full.shape[1], self._narrow_table.shape[1]), rows.size), pad,
                                dtype=np.int64)
                table[:self._narrow_table.shape[1], :split] = \
                    self._narrow_table.take(rows[:split], axis=0).T
                table[:full.shape[1], split:] = full.T
            position = np.empty(per_row.size, dtype=np.int64)
            position[rows] = np.arange(rows.size)
            rates = water_fill(table, capacity, per_row.take(rows).astype(float)).take(
                position.take(row_of))
            load = np.bincount(wide_flat, weights=np.repeat(rates, wide.shape[1]),
                               minlength=pad + 1)[:pad]
            over = (load > capacity * (1.0 + _SHARE_RTOL)) & ~included[:pad]
            if not over.any():
                return rates
            included[:pad] |= over

    def _arm_timer(self, slots: np.ndarray) -> None:
        """One timer at the next completion (with a window: the middle of the completions due
        within the window of the next one); it ends every flow due in the window."""
        self._generation += 1
        self._timer_at = None
        if slots.size == 0:
            return
        eta_s = self._remaining[slots] / self._rate[slots]
        next_s = float(eta_s.min())
        window_s = next_s * (1.0 + 1e-9 + self.time_quantum_rel) + self.time_quantum_s
        fire_s = next_s
        if self.time_window_s > 0:
            window_s += self.time_window_s
            due = eta_s <= window_s
            finishing = slots[due]
            fire_s = 0.5 * (next_s + float(eta_s[due].max()))
        else:
            finishing = slots[eta_s <= window_s]
        self._timer_at = self.env.now + fire_s
        self.env.timeout(fire_s).callbacks.append(
            partial(self._on_timer, self._generation, finishing))


def _widen(table: np.ndarray, width: int, pad: int) -> np.ndarray:
    """`table` with padding columns added up to `width`."""
    extra = np.full((table.shape[0], width - table.shape[1]), pad, dtype=table.dtype)
    return np.concatenate([table, extra], axis=1)


def _parts_of(env: simpy.Environment, whole: simpy.Event, count: int) -> list[simpy.Event]:
    """`count` events; `whole` fires (with the last one's time) once all of them have."""
    parts = [env.event() for _ in range(count)]
    left = [count]

    def one_done(ev: simpy.Event) -> None:
        left[0] -= 1
        if left[0] == 0:
            whole.succeed(ev.value)

    for part in parts:
        part.callbacks.append(one_done)
    return parts


def _edge_attr(graph: DiGraph, edge: Edge, name: str) -> float:
    try:
        return float(graph.edges[edge][name])
    except KeyError:
        raise TopologyError(f"link {edge} has no '{name}'; every link needs one") from None
