"""Expert-parallel load balancing (EPLB): from each expert's measured load, how many copies of
each expert to keep and which GPU holds each copy.

Every policy returns `phy2log[L, R]`: physical slot p of MoE layer l holds logical expert
`phy2log[l, p]`. Slots are GPU-major: GPU g holds slots `g * (R // G)` to `(g + 1) * (R // G) - 1`
(R = `num_replicas`, the experts plus the redundant copies; G = `num_gpus`, the EP ranks).
`placement_from_phy2log` turns it into an `ExpertPlacement` (moesim.traffic.experts).

- `deepseek_eplb`: DeepSeek's EPLB, ported to numpy from the reference implementation
  https://github.com/deepseek-ai/EPLB, `eplb.py` at commit
  d52c72d5b2f2fb4c41afbf8eb21366820239913d (`rebalance_experts` and the functions it calls;
  MIT License, Copyright (c) 2025 DeepSeek). Hierarchical policy when the node count divides
  the group count: pack expert groups onto nodes, replicate experts within each node, pack the
  copies onto the node's GPUs; otherwise the global policy (the same with one group, one node).
  The output equals the reference's `phy2log` (its first output), ties included:
  - the reference computes in float32 (`weight.float()`), as this port does; group loads are
    summed exactly and rounded once to float32, so they equal torch's float32 sums whenever the
    sums are representable (integer token counts below 2**24);
  - `balanced_packing` visits items in the order of torch's CPU `sort(descending=True)`, which
    is not stable: torch (aten/src/ATen/native/cpu/SortingKernel.cpp) calls libstdc++'s
    `std::sort` (introsort: a stable insertion sort up to 16 items, median-of-three quicksort
    above; checked against torch 2.13's CPU wheel, ties included; a build using x86-simd-sort
    instead may order equal loads differently). `_torch_sort_desc` replays that algorithm; a
    pack's load is accumulated in float32 and the first least-loaded open pack wins, as the
    reference's Python `min` does;
  - `replicate_experts` gives the next copy to `argmax` of load per copy, the first (lowest id)
    on ties, as torch's `max(dim).indices` does.
- `greedy_eplb`: a simple baseline (copies to the largest load per copy, then longest
  processing time first onto GPUs).
"""

from __future__ import annotations

import numpy as np

from moesim.errors import PlacementError
from moesim.inputs.options import CopyChoice
from moesim.traffic.experts import ExpertPlacement

__all__ = ["deepseek_eplb", "greedy_eplb", "placement_from_phy2log"]

_INSERTION_THRESHOLD = 16  # libstdc++'s _S_threshold


# --- checks ----------------------------------------------------------------------------------

def _check_load(load: np.ndarray) -> np.ndarray:
    """`load` as float64 `[L, E]`, or a PlacementError naming what is wrong."""
    array = np.asarray(load)
    if array.ndim != 2 or array.shape[0] < 1 or array.shape[1] < 1:
        raise PlacementError(f"expert load must be a 2-D array [MoE layers, experts] with at "
                             f"least one of each; got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise PlacementError(f"expert load must be numbers (token counts); got dtype "
                             f"{array.dtype}")
    values = array.astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        layer, expert = (int(i) for i in np.argwhere(bad)[0])
        raise PlacementError(f"expert load has {int(bad.sum())} non-finite value(s), the first "
                             f"at layer {layer}, expert {expert} ({values[layer, expert]}); "
                             "give finite token counts")
    negative = values < 0
    if negative.any():
        layer, expert = (int(i) for i in np.argwhere(negative)[0])
        raise PlacementError(f"expert load has {int(negative.sum())} negative value(s), the "
                             f"first at layer {layer}, expert {expert} "
                             f"({values[layer, expert]}); loads are token counts, give >= 0")
    if values.max() > np.finfo(np.float32).max:
        raise PlacementError(f"expert load {values.max():g} exceeds float32's range, which "
                             "EPLB computes in; rescale the loads (only ratios matter)")
    return values


def _check_positive(**counts: int) -> None:
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise PlacementError(f"{name} must be a positive integer; got {value!r}")


def _check_slots(num_experts: int, num_replicas: int, num_gpus: int) -> None:
    """Every expert gets a slot and every GPU the same number of slots."""
    _check_positive(num_replicas=num_replicas, num_gpus=num_gpus)
    if num_replicas < num_experts:
        raise PlacementError(f"num_replicas={num_replicas} is below the model's {num_experts} "
                             "experts; every expert needs a slot: give num_replicas >= "
                             f"{num_experts} (experts + --redundant-experts, which is >= 0)")
    if num_replicas % num_gpus:
        redundant = num_replicas - num_experts
        fix = redundant + (-num_replicas) % num_gpus
        raise PlacementError(
            f"num_replicas={num_replicas} ({num_experts} experts + {redundant} redundant) is not "
            f"a multiple of num_gpus={num_gpus}, so the GPUs cannot hold equal numbers of "
            f"slots: set --redundant-experts to {fix} (or another value making experts + "
            f"redundant a multiple of {num_gpus}), or change the EP size")


# --- DeepSeek's EPLB ---------------------------------------------------------------------------

def _torch_sort_desc(keys: np.ndarray) -> np.ndarray:
    """The indices `torch.sort(keys, descending=True)` returns on CPU for 1-D float32 `keys`.

    torch sorts float32 with libstdc++'s `std::sort` (not stable). With distinct keys any sort
    agrees, and up to 16 items `std::sort` is an insertion sort (stable), so both use numpy's
    stable argsort; otherwise this replays libstdc++'s introsort step by step.
    """
    n = keys.size
    if n <= _INSERTION_THRESHOLD or np.unique(keys).size == n:
        return np.argsort(-keys, kind="stable")
    items = [(float(k), i) for i, k in enumerate(keys)]

    def before(a: tuple[float, int], b: tuple[float, int]) -> bool:
        return a[0] > b[0]  # the descending comparator: strictly greater comes first

    def linear_insert(i: int) -> None:  # __unguarded_linear_insert
        value, j = items[i], i - 1
        while before(value, items[j]):
            items[j + 1] = items[j]
            j -= 1
        items[j + 1] = value

    def insertion_sort(first: int, last: int) -> None:  # __insertion_sort
        for i in range(first + 1, last):
            if before(items[i], items[first]):
                items[first:i + 1] = [items[i], *items[first:i]]
            else:
                linear_insert(i)

    def sift(first: int, hole: int, length: int, value: tuple[float, int]) -> None:
        top, child = hole, hole  # __adjust_heap then __push_heap
        while child < (length - 1) // 2:
            child = 2 * (child + 1)
            if before(items[first + child], items[first + child - 1]):
                child -= 1
            items[first + hole] = items[first + child]
            hole = child
        if length % 2 == 0 and child == (length - 2) // 2:
            child = 2 * (child + 1)
            items[first + hole] = items[first + child - 1]
            hole = child - 1
        parent = (hole - 1) // 2
        while hole > top and before(items[first + parent], value):
            items[first + hole] = items[first + parent]
            hole, parent = parent, (parent - 1) // 2
        items[first + hole] = value

    def heap_sort(first: int, last: int) -> None:  # __partial_sort(first, last, last)
        length = last - first
        for parent in range((length - 2) // 2, -1, -1):
            sift(first, parent, length, items[first + parent])
        while last - first > 1:
            last -= 1
            value, items[last] = items[last], items[first]
            sift(first, 0, last - first, value)

    def median_to_first(a: int, b: int, c: int, first: int) -> None:  # __move_median_to_first
        if before(items[a], items[b]):
            pick = b if before(items[b], items[c]) else c if before(items[a], items[c]) else a
        else:
            pick = a if before(items[a], items[c]) else c if before(items[b], items[c]) else b
        items[first], items[pick] = items[pick], items[first]

    def partition(first: int, last: int, pivot: int) -> int:  # __unguarded_partition
        while True:
            while before(items[first], items[pivot]):
                first += 1
            last -= 1
            while before(items[pivot], items[last]):
                last -= 1
            if first >= last:
                return first
            items[first], items[last] = items[last], items[first]
            first += 1

    def introsort(first: int, last: int, depth: int) -> None:  # __introsort_loop
        while last - first > _INSERTION_THRESHOLD:
            if depth == 0:
                heap_sort(first, last)
                return
            depth -= 1
            median_to_first(first + 1, first + (last - first) // 2, last - 1, first)
            cut = partition(first + 1, last, first)
            introsort(cut, last, depth)
            last = cut

    introsort(0, n, 2 * (n.bit_length() - 1))
    insertion_sort(0, _INSERTION_THRESHOLD)  # __final_insertion_sort
    for i in range(_INSERTION_THRESHOLD, n):
        linear_insert(i)
    return np.array([i for _, i in items], dtype=np.int64)


def _balanced_packing(weight: np.ndarray, num_packs: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's `balanced_packing`: `(pack_index, rank_in_pack)`, each `[X, n]`, packing
    each row's n items (float32 `weight[X, n]`) into `num_packs` packs of n / num_packs items,
    heaviest item first into the least loaded open pack (first such pack on ties)."""
    rows, items = weight.shape
    per_pack = items // num_packs
    if per_pack == 1:  # the reference's shortcut: item i in pack i
        return (np.broadcast_to(np.arange(items, dtype=np.int64), weight.shape).copy(),
                np.zeros(weight.shape, dtype=np.int64))
    pack_index = np.full(weight.shape, -1, dtype=np.int64)
    rank_in_pack = np.full(weight.shape, -1, dtype=np.int64)
    for row in range(rows):
        pack_weight = np.zeros(num_packs, dtype=np.float32)
        pack_items = np.zeros(num_packs, dtype=np.int64)
        for item in _torch_sort_desc(weight[row]):
            pack = int(np.argmin(np.where(pack_items < per_pack, pack_weight, np.inf)))
            pack_index[row, item] = pack
            rank_in_pack[row, item] = pack_items[pack]
            pack_weight[pack] += weight[row, item]  # float32, as the reference's tensors
            pack_items[pack] += 1
    return pack_index, rank_in_pack


def _replicate_experts(weight: np.ndarray, num_phy: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's `replicate_experts`: `(phy2log[X, num_phy], logcnt[X, num_log])`; each
    extra copy goes to the expert with the largest float32 load per copy (lowest id on ties)."""
    rows, num_log = weight.shape
    phy2log = np.tile(np.arange(num_phy, dtype=np.int64), (rows, 1))
    logcnt = np.ones((rows, num_log), dtype=np.int64)
    row = np.arange(rows)
    for slot in range(num_log, num_phy):
        best = np.argmax(weight / logcnt.astype(np.float32), axis=1)
        phy2log[:, slot] = best
        logcnt[row, best] += 1
    return phy2log, logcnt


def _inverse(perm: np.ndarray) -> np.ndarray:
    """Row-wise inverse of a permutation `[X, n]`."""
    inverse = np.empty_like(perm)
    np.put_along_axis(inverse, perm, np.broadcast_to(np.arange(perm.shape[1]), perm.shape), 1)
    return inverse


def _rebalance_hierarchical(
    weight: np.ndarray, num_physical: int, num_groups: int, num_nodes: int, num_gpus: int
) -> np.ndarray:
    """The reference's `rebalance_experts_hierarchical`, first output (`phy2log`)."""
    num_layers, num_logical = weight.shape
    group_size = num_logical // num_groups
    groups_per_node = num_groups // num_nodes
    per_gpu = num_physical // num_gpus
    per_node = num_logical // num_nodes

    # Step 1: pack expert groups onto nodes; mlog numbers experts node by node.
    group_load = weight.astype(np.float64).reshape(num_layers, num_groups, group_size).sum(-1)
    group_pack, group_rank = _balanced_packing(group_load.astype(np.float32), num_nodes)
    first_mlog = (group_pack * groups_per_node + group_rank) * group_size
    log2mlog = (first_mlog[:, :, None] + np.arange(group_size)).reshape(num_layers, num_logical)
    mlog2log = _inverse(log2mlog)

    # Step 2: replicate experts within each node: rows [num_layers * num_nodes, per_node].
    mlog_load = np.take_along_axis(weight, mlog2log, -1).reshape(-1, per_node)
    phy2mlog, mlogcnt = _replicate_experts(mlog_load, num_physical // num_nodes)

    # Step 3: pack each node's copies onto its GPUs.
    phy_load = np.take_along_axis(mlog_load / mlogcnt.astype(np.float32), phy2mlog, -1)
    pack_index, rank_in_pack = _balanced_packing(phy_load, num_gpus // num_nodes)
    pphy2phy = _inverse(pack_index * per_gpu + rank_in_pack)
    pphy2mlog = np.take_along_axis(phy2mlog, pphy2phy, -1).reshape(num_layers, num_nodes, -1)
    pphy2mlog = (pphy2mlog + (np.arange(num_nodes) * per_node)[None, :, None]).reshape(
        num_layers, num_physical)
    return np.take_along_axis(mlog2log, pphy2mlog, -1)


def deepseek_eplb(
    load: np.ndarray, num_replicas: int, num_groups: int, num_nodes: int, num_gpus: int
) -> np.ndarray:
    """DeepSeek's EPLB (`eplb.rebalance_experts`): `phy2log[L, num_replicas]` (int64), the
    logical expert of each physical slot, GPU-major (see the module docstring).

    `load[L, E]`: each expert's load per MoE layer (token counts or their moving average);
    `num_replicas`: slots in all (experts + redundant copies), a multiple of `num_gpus`;
    `num_groups`: the routing's expert groups; `num_nodes`: server nodes; `num_gpus`: GPUs (EP
    ranks). Hierarchical policy when `num_groups % num_nodes == 0` (then `num_groups` must
    divide E and `num_nodes` divide `num_gpus`), else the global policy, which ignores groups
    and nodes, as the reference chooses.
    """
    values = _check_load(load)
    num_experts = values.shape[1]
    _check_positive(num_groups=num_groups, num_nodes=num_nodes)
    _check_slots(num_experts, num_replicas, num_gpus)
    hierarchical = num_groups % num_nodes == 0
    if hierarchical and num_gpus % num_nodes:
        raise PlacementError(f"num_gpus={num_gpus} is not a multiple of num_nodes={num_nodes}; "
                             "the hierarchical policy gives every node the same number of "
                             f"GPUs: use an EP size that is a multiple of {num_nodes}, or "
                             "num_nodes=1")
    if hierarchical and num_experts % num_groups:
        raise PlacementError(f"{num_experts} experts do not split into num_groups={num_groups} "
                             "equal groups; give the model's expert group count (n_group), "
                             "or num_groups=1 for the global policy")
    weight = values.astype(np.float32)
    if hierarchical:
        return _rebalance_hierarchical(weight, num_replicas, num_groups, num_nodes, num_gpus)
    return _rebalance_hierarchical(weight, num_replicas, 1, 1, num_gpus)


# --- greedy baseline ---------------------------------------------------------------------------

def _first_repeat(slots: list[int]) -> int:
    """The first slot whose expert an earlier slot already holds (-1: none)."""
    seen: set[int] = set()
    for slot, expert in enumerate(slots):
        if expert in seen:
            return slot
        seen.add(expert)
    return -1


def _spread_duplicates(gpus: list[list[int]], share: np.ndarray) -> None:
    """Swap copies between GPUs until no GPU holds two copies of an expert that some other GPU
    lacks. Each swap moves a repeated expert e from GPU g to a GPU h without e, taking from h an
    expert f that g lacks or that h holds twice (one always exists: if g held every expert of h,
    h's slots would repeat one), the f of load per copy closest to e's; each swap lowers the
    number of repeated slots, so this ends."""
    while True:
        for slots in gpus:
            s = _first_repeat(slots)
            if s < 0:
                continue
            e = slots[s]
            swaps = [(abs(share[e] - share[f]), h, t) for h, other in enumerate(gpus)
                     if e not in other for t, f in enumerate(other)
                     if f not in slots or other.count(f) > 1]
            if swaps:
                _, h, t = min(swaps)
                slots[s], gpus[h][t] = gpus[h][t], e
                break
        else:
            return


def greedy_eplb(load: np.ndarray, num_replicas: int, num_gpus: int) -> np.ndarray:
    """A simple EPLB baseline: `phy2log[L, num_replicas]` (int64), GPU-major.

    Copies: every expert starts with one; each of the `num_replicas - E` extra copies goes to
    the expert with the largest load per copy (ties: lowest expert id). Placement, per layer:
    copies heaviest first (load per copy; ties: lowest expert id), each to the least loaded GPU
    with a free slot (ties: lowest GPU index), preferring GPUs that do not hold that expert yet;
    each GPU gets `num_replicas // num_gpus` slots, filled in placement order. Where that still
    leaves an expert twice on one GPU although some GPU lacks it, copies are swapped between
    GPUs (`_spread_duplicates`), so an expert repeats on a GPU only when it has more copies
    than there are GPUs.
    """
    values = _check_load(load)
    num_layers, num_experts = values.shape
    _check_slots(num_experts, num_replicas, num_gpus)
    per_gpu = num_replicas // num_gpus
    counts = np.ones((num_layers, num_experts), dtype=np.int64)
    rows = np.arange(num_layers)
    for _ in range(num_replicas - num_experts):
        counts[rows, np.argmax(values / counts, axis=1)] += 1
    phy2log = np.empty((num_layers, num_replicas), dtype=np.int64)
    for layer in range(num_layers):
        share = values[layer] / counts[layer]
        copies = np.repeat(np.arange(num_experts), counts[layer])
        gpu_load = np.zeros(num_gpus)
        gpus: list[list[int]] = [[] for _ in range(num_gpus)]
        for e in copies[np.argsort(-share[copies], kind="stable")].tolist():
            open_gpu = np.array([len(slots) < per_gpu for slots in gpus])
            lacking = open_gpu & np.array([e not in slots for slots in gpus])
            pool = lacking if lacking.any() else open_gpu
            g = int(np.argmin(np.where(pool, gpu_load, np.inf)))
            gpus[g].append(e)
            gpu_load[g] += share[e]
        _spread_duplicates(gpus, share)
        phy2log[layer] = np.concatenate(gpus)
    return phy2log


# --- to a placement ----------------------------------------------------------------------------

def placement_from_phy2log(
    phy2log: np.ndarray,
    num_experts: int,
    num_gpus: int,
    copy_choice: CopyChoice = "local_first",
    name: str = "eplb",
) -> ExpertPlacement:
    """The `ExpertPlacement` of `phy2log[L, R]`: EP rank g's slots are `phy2log[:, g*R/G :
    (g+1)*R/G]` in order (`slot_expert[L, num_gpus, R // num_gpus]`).

    A second copy of an expert on the same GPU would add no capacity there (a placement routes
    among GPUs, not slots), so the GPU keeps its first copy and the repeat's slot is left empty
    (-1): that expert then has fewer copies than `phy2log` gave it and its load splits over the
    GPUs that hold it.
    """
    table = np.asarray(phy2log)
    _check_positive(num_experts=num_experts, num_gpus=num_gpus)
    if table.ndim != 2 or table.shape[1] < 1:
        raise PlacementError(f"phy2log must be a 2-D array [MoE layers, slots]; got shape "
                             f"{table.shape}")
    if not np.issubdtype(table.dtype, np.integer):
        raise PlacementError(f"phy2log must hold expert ids (integers); got dtype {table.dtype}")
    num_layers, num_slots = table.shape
    if num_slots % num_gpus:
        raise PlacementError(f"phy2log has {num_slots} slots per layer, not a multiple of "
                             f"num_gpus={num_gpus}; every GPU must hold the same number of "
                             "slots: change --redundant-experts or the EP size")
    if table.min() < 0 or table.max() >= num_experts:
        bad = int(table[(table < 0) | (table >= num_experts)][0])
        raise PlacementError(f"phy2log names expert {bad} but the model has {num_experts} "
                             f"experts (ids 0..{num_experts - 1})")
    held = np.zeros((num_layers, num_experts), dtype=bool)
    held[np.arange(num_layers)[:, None], table] = True
    if not held.all():
        layer, expert = (int(i) for i in np.argwhere(~held)[0])
        raise PlacementError(f"phy2log layer {layer} places no copy of expert {expert}; every "
                             "expert needs at least one slot")
    per_gpu = num_slots // num_gpus
    slot_expert = table.astype(np.int64).reshape(num_layers, num_gpus, per_gpu)
    same = slot_expert[..., :, None] == slot_expert[..., None, :]  # [L, G, S, S]
    repeat = (same & np.tri(per_gpu, k=-1, dtype=bool)).any(axis=-1)  # an earlier slot has it
    slot_expert = np.where(repeat, -1, slot_expert)
    return ExpertPlacement(slot_expert, num_experts, copy_choice, name=name)
