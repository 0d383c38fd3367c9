"""EPLB (moesim.traffic.eplb): DeepSeek's reference example reproduced exactly, the greedy
baseline worked by hand, invariants on random loads, one clear error per bad input, and (with
torch installed) the numpy port checked against a verbatim copy of the reference.

The reference is https://github.com/deepseek-ai/EPLB at commit
d52c72d5b2f2fb4c41afbf8eb21366820239913d: `eplb.py` (git blob 26c3987f...) and the example in
`README.md`, section "Interface and Example" (unchanged since the initial commit f9bc62e).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from moesim.errors import PlacementError
from moesim.traffic.eplb import (
    _spread_duplicates,
    _torch_sort_desc,
    deepseek_eplb,
    greedy_eplb,
    placement_from_phy2log,
)
from moesim.traffic.experts import contiguous_placement

REFERENCE_COMMIT = "d52c72d5b2f2fb4c41afbf8eb21366820239913d"
REFERENCE_EPLB_BLOB = "26c3987ff019db83a46fd65d186c7ebc4e82913d"  # git blob of eplb.py there

# deepseek-ai/EPLB README.md @ d52c72d5, "Interface and Example": "a two-layer MoE model, and
# each layer contains 12 experts. We introduce 4 redundant experts per layer, and the total 16
# replicas are placed on 2 nodes, and each node contains 4 GPUs."
#
#     weight = torch.tensor([[ 90, 132,  40,  61, 104, 165,  39,   4,  73,  56, 183,  86],
#                            [ 20, 107, 104,  64,  19, 197, 187, 157, 172,  86,  16,  27]])
#     num_replicas = 16
#     num_groups = 4
#     num_nodes = 2
#     num_gpus = 8
#     phy2log, log2phy, logcnt = eplb.rebalance_experts(weight, num_replicas, num_groups,
#                                                       num_nodes, num_gpus)
#     print(phy2log)
#     # Output:
#     # tensor([[ 5,  6,  5,  7,  8,  4,  3,  4, 10,  9, 10,  2,  0,  1, 11,  1],
#     #         [ 7, 10,  6,  8,  6, 11,  8,  9,  2,  4,  5,  1,  5,  0,  3,  1]])
README_WEIGHT = np.array([[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                          [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]])
README_NUM_REPLICAS = 16
README_NUM_GROUPS = 4
README_NUM_NODES = 2
README_NUM_GPUS = 8
README_PHY2LOG = np.array([[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1],
                           [7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]])
README_ARGS = (README_NUM_REPLICAS, README_NUM_GROUPS, README_NUM_NODES, README_NUM_GPUS)


def gpu_loads(load: np.ndarray, phy2log: np.ndarray, num_gpus: int) -> np.ndarray:
    """`[L, G]` load per GPU, each expert's load split evenly over its copies."""
    load = np.asarray(load, dtype=np.float64)
    layers, experts = load.shape
    counts = np.stack([np.bincount(row, minlength=experts) for row in phy2log])
    share = np.take_along_axis(load / np.maximum(counts, 1), phy2log, 1)
    return share.reshape(layers, num_gpus, -1).sum(-1)


def contiguous_loads(load: np.ndarray, num_gpus: int) -> np.ndarray:
    """`[L, G]` load per GPU without replicas, experts in contiguous blocks (the first E % G
    GPUs one expert more, moesim's contiguous rule when G divides E)."""
    blocks = np.array_split(np.arange(load.shape[1]), num_gpus)
    return np.stack([load[:, block].sum(1) for block in blocks], axis=1).astype(np.float64)


# --- DeepSeek's README example -----------------------------------------------------------------

def test_readme_example_reproduced_exactly() -> None:
    phy2log = deepseek_eplb(README_WEIGHT, *README_ARGS)
    assert phy2log.dtype == np.int64
    np.testing.assert_array_equal(phy2log, README_PHY2LOG)


def test_readme_example_keeps_each_group_on_one_node() -> None:
    """Hierarchical policy: groups of 3 experts (4 groups), 8 slots a node; layer 0 puts
    groups 1, 2 (experts 3..8) on node 0 and groups 0, 3 on node 1."""
    phy2log = deepseek_eplb(README_WEIGHT, *README_ARGS)
    node_of_slot = np.arange(16) // 8
    for row in phy2log:
        for group in range(4):
            nodes = set(node_of_slot[(row // 3) == group].tolist())
            assert len(nodes) == 1, (group, nodes)
    assert set(phy2log[0, :8].tolist()) == {3, 4, 5, 6, 7, 8}


def test_readme_example_balances_better_than_contiguous() -> None:
    """Max GPU load: contiguous without replicas 269 (layer 0: experts 4, 5 on GPU 2) and 344
    (layer 1: experts 6, 7); DeepSeek's EPLB gets 156 and 179.5, the greedy baseline 139 and
    172 (the mean is 129.1 and 144.5)."""
    baseline = contiguous_loads(README_WEIGHT, README_NUM_GPUS).max(1)
    np.testing.assert_array_equal(baseline, [269, 344])
    for phy2log, expected in ((deepseek_eplb(README_WEIGHT, *README_ARGS), [156, 179.5]),
                              (greedy_eplb(README_WEIGHT, README_NUM_REPLICAS, README_NUM_GPUS),
                               [139, 172])):
        balanced = gpu_loads(README_WEIGHT, phy2log, README_NUM_GPUS)
        np.testing.assert_allclose(balanced.sum(1), README_WEIGHT.sum(1))
        np.testing.assert_array_equal(balanced.max(1), expected)
        assert (balanced.max(1) <= baseline).all(), (balanced.max(1), baseline)


def test_readme_example_as_placement() -> None:
    placement = placement_from_phy2log(README_PHY2LOG, 12, README_NUM_GPUS)
    assert placement.slot_expert.shape == (2, 8, 2)
    assert placement.copy_choice == "local_first" and placement.name == "eplb"
    # layer 0: experts 1, 4, 5, 10 have two copies, on two different GPUs
    np.testing.assert_array_equal(placement.copies[0],
                                  [1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1])
    assert (placement.slot_expert >= 0).all()


# --- greedy baseline, by hand ------------------------------------------------------------------

def test_greedy_hand_worked() -> None:
    """Loads [6, 1, 1, 0], 6 slots on 2 GPUs (3 each). Copies: load per copy 6 is the largest,
    so expert 0 gets a 2nd copy (6/2 = 3), still the largest, so a 3rd (2): copies [3, 1, 1, 1].
    Placement, heaviest first: expert 0 (2) -> GPU 0 (tie: lowest index); expert 0 (2) -> GPU 1
    (GPU 0 holds expert 0); expert 0 (2) -> GPU 0 (both hold it: unavoidable with 3 copies on
    2 GPUs; tie 2 = 2); expert 1 (1) -> GPU 1 (2 < 4); expert 2 (1) -> GPU 1 (3 < 4, now full);
    expert 3 (0) -> GPU 0. GPU 0 [0, 0, 3], GPU 1 [0, 1, 2]: loads 4 and 4."""
    phy2log = greedy_eplb(np.array([[6, 1, 1, 0]]), 6, 2)
    np.testing.assert_array_equal(phy2log, [[0, 0, 3, 0, 1, 2]])
    np.testing.assert_array_equal(gpu_loads(np.array([[6, 1, 1, 0]]), phy2log, 2), [[4, 4]])
    # as a placement GPU 0 keeps one copy of expert 0: its 2nd slot is left empty
    placement = placement_from_phy2log(phy2log, 4, 2)
    np.testing.assert_array_equal(placement.slot_expert, [[[0, -1, 3], [0, 1, 2]]])
    np.testing.assert_array_equal(placement.copies, [[2, 1, 1, 1]])


def test_greedy_avoids_two_copies_on_one_gpu() -> None:
    """Loads [8, 5, 1], 4 slots on 2 GPUs: expert 0 gets the extra copy (8 > 5): copies of
    5 (expert 1), 4, 4 (expert 0), 1 (expert 2). Expert 1 -> GPU 0; expert 0 -> GPU 1 (0 < 5);
    expert 0 again: GPU 1 is least loaded (4) but holds it, so GPU 0 (9); expert 2 -> GPU 1."""
    phy2log = greedy_eplb(np.array([[8, 5, 1]]), 4, 2)
    np.testing.assert_array_equal(phy2log, [[1, 0, 0, 2]])
    np.testing.assert_array_equal(gpu_loads(np.array([[8, 5, 1]]), phy2log, 2), [[9, 5]])


def test_spread_duplicates_swaps_a_repeat_away() -> None:
    """GPU 0 holds expert 0 twice while GPU 1 lacks it: swap with the expert of GPU 1 whose load
    per copy is closest to expert 0's (expert 2: |3 - 2.5| < |3 - 1|)."""
    gpus = [[0, 0, 3], [1, 2, 4]]
    _spread_duplicates(gpus, np.array([3.0, 1.0, 2.5, 0.5, 0.2]))
    assert gpus == [[0, 2, 3], [1, 0, 4]]
    # nothing to do when the repeated expert is on every GPU
    gpus = [[0, 0], [0, 1]]
    _spread_duplicates(gpus, np.array([1.0, 1.0]))
    assert gpus == [[0, 0], [0, 1]]


def test_greedy_no_redundancy_is_lpt() -> None:
    """No extra slots: LPT of the experts themselves, 2 a GPU: 9 -> G0, 7 -> G1, 5 -> G1,
    3 -> G0."""
    np.testing.assert_array_equal(greedy_eplb(np.array([[3, 9, 5, 7]]), 4, 2), [[1, 0, 3, 2]])


# --- invariants on random loads ----------------------------------------------------------------

def _random_config(rng: np.random.Generator) -> tuple[int, int, int, int, int, int]:
    """(layers, experts, replicas, groups, nodes, gpus), valid for deepseek_eplb; about a third
    take the global policy (groups not a multiple of nodes)."""
    nodes = int(rng.choice([1, 2, 3, 4]))
    gpus = nodes * int(rng.choice([1, 2, 3, 4]))
    if nodes == 1 or rng.random() < 0.6:
        groups = nodes * int(rng.choice([1, 2, 3, 4]))
        experts = groups * int(rng.choice([1, 2, 3, 5, 8]))
    else:
        groups = nodes + 1  # not a multiple of nodes >= 2: global policy
        experts = int(rng.integers(2, 80))
    replicas = experts + int(rng.integers(0, experts + 1))
    replicas += (-replicas) % gpus
    return int(rng.integers(1, 5)), experts, replicas, groups, nodes, gpus


def _random_load(rng: np.random.Generator, layers: int, experts: int) -> np.ndarray:
    high = int(rng.choice([2, 5, 50, 10**6]))  # small ranges: many equal loads
    return rng.integers(0, high, size=(layers, experts))


def _check_phy2log(phy2log: np.ndarray, experts: int, replicas: int, gpus: int) -> None:
    assert phy2log.dtype == np.int64 and phy2log.shape[1] == replicas
    assert phy2log.min() >= 0 and phy2log.max() < experts
    for row in phy2log:
        counts = np.bincount(row, minlength=experts)
        assert (counts >= 1).all()  # every expert has a copy
        assert counts.sum() == replicas
    placement = placement_from_phy2log(phy2log, experts, gpus)
    assert placement.slot_expert.shape == (phy2log.shape[0], gpus, replicas // gpus)
    # a placement's copies: the GPUs holding the expert
    for layer, row in enumerate(phy2log):
        on = row.reshape(gpus, -1)
        held = [(on == e).any(axis=1).sum() for e in range(experts)]
        np.testing.assert_array_equal(placement.copies[layer], held)


@pytest.mark.parametrize("seed", range(30))
def test_deepseek_invariants(seed: int) -> None:
    rng = np.random.default_rng(seed)
    layers, experts, replicas, groups, nodes, gpus = _random_config(rng)
    load = _random_load(rng, layers, experts)
    phy2log = deepseek_eplb(load, replicas, groups, nodes, gpus)
    _check_phy2log(phy2log, experts, replicas, gpus)
    np.testing.assert_allclose(gpu_loads(load, phy2log, gpus).sum(1), load.sum(1))
    if groups % nodes == 0:  # hierarchical: each group's copies on one node
        node = np.arange(replicas) // (replicas // nodes)
        size = experts // groups
        for row in phy2log:
            for group in range(groups):
                assert len(set(node[row // size == group].tolist())) == 1


@pytest.mark.parametrize("seed", range(30))
def test_greedy_invariants(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    layers, experts, replicas, _, _, gpus = _random_config(rng)
    load = _random_load(rng, layers, experts)
    phy2log = greedy_eplb(load, replicas, gpus)
    _check_phy2log(phy2log, experts, replicas, gpus)
    balanced = gpu_loads(load, phy2log, gpus)
    np.testing.assert_allclose(balanced.sum(1), load.sum(1))
    for layer, row in enumerate(phy2log):
        counts = np.bincount(row, minlength=experts)
        on = row.reshape(gpus, -1)
        for e in range(experts):  # copies on distinct GPUs wherever that is possible
            assert (on == e).any(axis=1).sum() == min(counts[e], gpus)
        # the copies: one more to the largest load per copy, so no expert could give one away
        # to a heavier one (largest load per copy <= smallest load per (copies - 1))
        share = load[layer] / counts
        many = counts > 1
        if many.any():
            assert share.max() <= (load[layer][many] / (counts[many] - 1)).min() + 1e-9


def test_no_redundancy_divisible_matches_contiguous_shape() -> None:
    """With R = E and G | E both policies fill every slot once, like the contiguous placement."""
    load = np.arange(1, 17).reshape(2, 8)
    default = contiguous_placement(8, 4, 2)
    for phy2log in (deepseek_eplb(load, 8, 1, 1, 4), greedy_eplb(load, 8, 4)):
        placement = placement_from_phy2log(phy2log, 8, 4)
        assert placement.slot_expert.shape == default.slot_expert.shape
        np.testing.assert_array_equal(placement.copies, default.copies)
        assert gpu_loads(load, phy2log, 4).max() <= contiguous_loads(load, 4).max()


def test_global_policy_ignores_nodes() -> None:
    """Groups not a multiple of nodes: the global policy, as if one group on one node (the
    reference passes 1, 1), so the node count need not divide the GPU count."""
    load = np.array([[5, 1, 4, 2, 8, 3], [1, 1, 1, 1, 1, 9]])
    np.testing.assert_array_equal(deepseek_eplb(load, 9, 2, 4, 3),  # 4 nodes, 3 GPUs
                                  deepseek_eplb(load, 9, 1, 1, 3))
    np.testing.assert_array_equal(deepseek_eplb(load, 8, 3, 2, 4),
                                  deepseek_eplb(load, 8, 1, 1, 4))


def test_imports_without_torch() -> None:
    code = ("import sys; sys.modules['torch'] = None; import moesim.traffic.eplb as m; "
            "print(m.deepseek_eplb([[1, 2, 3, 4]], 4, 1, 1, 2).tolist())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[[3, 0, 2, 1]]"


# --- errors ------------------------------------------------------------------------------------

LOAD = np.ones((2, 8))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: deepseek_eplb(LOAD, 12, 1, 1, 8), r"not a multiple of num_gpus=8.*"
                                                   r"--redundant-experts to 8"),
        (lambda: greedy_eplb(LOAD, 10, 4), r"--redundant-experts to 4"),
        (lambda: deepseek_eplb(LOAD, 4, 1, 1, 2), r"below the model's 8 experts"),
        (lambda: greedy_eplb(LOAD, 6, 2), r"num_replicas >= 8"),
        (lambda: deepseek_eplb(LOAD, 12, 4, 4, 6), r"num_gpus=6 is not a multiple of "
                                                   r"num_nodes=4"),
        (lambda: deepseek_eplb(LOAD, 12, 3, 1, 4), r"8 experts do not split into "
                                                   r"num_groups=3"),
        (lambda: deepseek_eplb(-LOAD, 8, 1, 1, 2), r"negative value.*layer 0, expert 0"),
        (lambda: greedy_eplb(np.where(LOAD > 0, np.nan, 0), 8, 2), r"non-finite"),
        (lambda: greedy_eplb(np.full((1, 2), np.inf), 2, 2), r"non-finite"),
        (lambda: deepseek_eplb(np.ones(8), 8, 1, 1, 2), r"2-D array .* shape \(8,\)"),
        (lambda: greedy_eplb(np.ones((2, 2, 2)), 8, 2), r"2-D array"),
        (lambda: greedy_eplb(np.ones((0, 4)), 4, 2), r"at least one"),
        (lambda: greedy_eplb(np.full((1, 2), 1e39), 2, 2), r"float32"),
        (lambda: greedy_eplb(LOAD, 8, 0), r"num_gpus must be a positive integer"),
        (lambda: deepseek_eplb(LOAD, 8, 0, 1, 2), r"num_groups must be a positive integer"),
        (lambda: placement_from_phy2log(np.array([[0, 1, 2]]), 3, 2), r"not a multiple of "
                                                                      r"num_gpus=2"),
        (lambda: placement_from_phy2log(np.array([[0, 1, 2, 5]]), 4, 2), r"names expert 5"),
        (lambda: placement_from_phy2log(np.array([[0, 1, 1, 0]]), 4, 2), r"no copy of expert 2"),
        (lambda: placement_from_phy2log(np.array([0, 1]), 2, 2), r"2-D array"),
        (lambda: placement_from_phy2log(np.array([[0.0, 1.0]]), 2, 2), r"integers"),
    ],
)
def test_errors(call: Any, match: str) -> None:
    with pytest.raises(PlacementError, match=match):
        call()


# --- against the reference (torch) ------------------------------------------------------------

def test_reference_copy_is_verbatim() -> None:
    """The embedded eplb.py is byte for byte the file at the commit (same git blob id)."""
    data = _REFERENCE_EPLB_PY.encode()
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    assert blob == REFERENCE_EPLB_BLOB


def _reference_phy2log(load: np.ndarray, *args: int) -> np.ndarray:
    """The reference's `rebalance_experts(weight, *args)[0]`; skips the test without torch."""
    torch = pytest.importorskip("torch")
    namespace: dict[str, Any] = {}
    exec(compile(_REFERENCE_EPLB_PY, "deepseek-ai/EPLB/eplb.py", "exec"), namespace)
    phy2log, _, _ = namespace["rebalance_experts"](torch.from_numpy(load), *args)
    return np.asarray(phy2log.numpy())


def test_reference_readme_example() -> None:
    np.testing.assert_array_equal(_reference_phy2log(README_WEIGHT, *README_ARGS),
                                  README_PHY2LOG)


@pytest.mark.parametrize("seed", range(20))
def test_matches_reference_on_random_loads(seed: int) -> None:
    """Integer loads, hierarchical and global policies, up to 160 slots a node (torch sorts
    those with introsort, so equal loads exercise its tie order)."""
    rng = np.random.default_rng(1000 + seed)
    layers, experts, replicas, groups, nodes, gpus = _random_config(rng)
    load = _random_load(rng, layers, experts)
    args = (replicas, groups, nodes, gpus)
    np.testing.assert_array_equal(deepseek_eplb(load, *args), _reference_phy2log(load, *args),
                                  err_msg=f"load {load.tolist()}, args {args}")


def test_matches_reference_deepseek_v3_scale() -> None:
    """256 experts in 8 groups, 32 redundant, 4 nodes of 8 GPUs (hierarchical), and the same
    on 3 nodes of 12 GPUs (global: 8 groups do not split over 3 nodes); 4 layers."""
    rng = np.random.default_rng(7)
    load = rng.integers(0, 300, size=(4, 256))
    for args in ((288, 8, 4, 32), (288, 8, 3, 36)):
        np.testing.assert_array_equal(deepseek_eplb(load, *args),
                                      _reference_phy2log(load, *args))


def test_sort_order_matches_torch() -> None:
    """`_torch_sort_desc` returns torch's CPU `sort(descending=True)` order, ties included."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    for size in (1, 5, 16, 17, 40, 100, 300):
        for high in (1, 3, 1000):
            keys = rng.integers(0, high, size=size).astype(np.float32)
            expected = torch.from_numpy(keys[None]).sort(-1, descending=True).indices[0]
            np.testing.assert_array_equal(_torch_sort_desc(keys), expected.numpy(),
                                          err_msg=f"keys {keys.tolist()}")


# deepseek-ai/EPLB eplb.py at REFERENCE_COMMIT, verbatim (MIT License, Copyright (c) 2025
# DeepSeek). Lines over 100 characters are continued with a backslash-newline and trailing
# spaces are written \x20, both of which the string literal undoes: test_reference_copy_is_verbatim
# checks the git blob id.
_REFERENCE_EPLB_PY = '''\
from typing import Tuple

import torch

def balanced_packing(weight: torch.Tensor, num_packs: int) -> Tuple[torch.Tensor, \
torch.Tensor]:
    """
    Pack n weighted objects to m packs, such that each bin contains exactly n/m objects and \
the weights of all packs
    are as balanced as possible.

    Parameters:
        weight: [X, n], the weight of each item
        num_packs: number of packs
\x20\x20\x20\x20
    Returns:\x20
        pack_index: [X, n], the pack index of each item
        rank_in_pack: [X, n], the rank of the item in the pack
    """
    num_layers, num_groups = weight.shape
    assert num_groups % num_packs == 0
    groups_per_pack = num_groups // num_packs

    if groups_per_pack == 1:
        pack_index = torch.arange(weight.size(-1), dtype=torch.int64, \
device=weight.device).expand(weight.shape)
        rank_in_pack = torch.zeros_like(weight, dtype=torch.int64)
        return pack_index, rank_in_pack

    indices = weight.float().sort(-1, descending=True).indices.cpu()
    pack_index = torch.full_like(weight, fill_value=-1, dtype=torch.int64, device='cpu')
    rank_in_pack = torch.full_like(pack_index, fill_value=-1)
    for i in range(num_layers):
        pack_weights = [0] * num_packs
        pack_items = [0] * num_packs
        for group in indices[i]:
            pack = min((i for i in range(num_packs) if pack_items[i] < groups_per_pack),\x20
                       key=pack_weights.__getitem__)
            assert pack_items[pack] < groups_per_pack
            pack_index[i, group] = pack
            rank_in_pack[i, group] = pack_items[pack]
            pack_weights[pack] += weight[i, group]
            pack_items[pack] += 1
    return pack_index, rank_in_pack


def replicate_experts(weight: torch.Tensor, num_phy: int) -> Tuple[torch.Tensor, torch.Tensor, \
torch.Tensor]:

    """
    Replicate `num_log` experts to `num_phy` replicas, such that the maximum load of all \
replicas is minimized.

    Parameters:
        weight: [X, num_log]
        num_phy: total number of experts after replication
\x20\x20\x20\x20
    Returns:
        phy2log: [X, num_phy], logical expert id of each physical expert
        rank: [X, num_phy], the replica rank
        logcnt: [X, num_log], number of replicas for each logical expert
    """
    n, num_log = weight.shape
    num_redundant = num_phy - num_log
    assert num_redundant >= 0
    device = weight.device
    phy2log = torch.arange(num_phy, dtype=torch.int64, device=device).repeat(n, 1)
    rank = torch.zeros(n, num_phy, dtype=torch.int64, device=device)
    logcnt = torch.ones(n, num_log, dtype=torch.int64, device=device)
    arangen = torch.arange(n, dtype=torch.int64, device=device)
    for i in range(num_log, num_phy):
        redundant_indices = (weight / logcnt).max(dim=-1).indices
        phy2log[:, i] = redundant_indices
        rank[:, i] = logcnt[arangen, redundant_indices]
        logcnt[arangen, redundant_indices] += 1
    return phy2log, rank, logcnt


def rebalance_experts_hierarchical(weight: torch.Tensor, num_physical_experts: int,\x20
                      num_groups: int, num_nodes: int, num_gpus: int):
    """
    Parameters:
        weight: [num_moe_layers, num_logical_experts]
        num_physical_experts: number of physical experts after replication
        num_groups: number of expert groups
        num_nodes: number of server nodes, where the intra-node network (e.g, NVLink) is faster
        num_gpus: number of GPUs, must be a multiple of `num_nodes`

    Returns:\x20
        physical_to_logical_map: [num_moe_layers, num_physical_experts]
        logical_to_physical_map: [num_moe_layers, num_logical_experts, X]
        logical_count: [num_moe_layers, num_logical_experts]
    """
    num_layers, num_logical_experts = weight.shape
    assert num_logical_experts % num_groups == 0
    group_size = num_logical_experts // num_groups\x20
    assert num_groups % num_nodes == 0
    groups_per_node = num_groups // num_nodes
    assert num_gpus % num_nodes == 0
    assert num_physical_experts % num_gpus == 0
    phy_experts_per_gpu = num_physical_experts // num_gpus

    def inverse(perm: torch.Tensor) -> torch.Tensor:
        inv = torch.empty_like(perm)
        inv.scatter_(1, perm, torch.arange(perm.size(1), dtype=torch.int64, \
device=perm.device).expand(perm.shape))
        return inv

    # Step 1: pack groups to nodes
    tokens_per_group = weight.unflatten(-1, (num_groups, group_size)).sum(-1)
    group_pack_index, group_rank_in_pack = balanced_packing(tokens_per_group, num_nodes)\x20
    log2mlog = (((group_pack_index * groups_per_node + group_rank_in_pack) * \
group_size).unsqueeze(-1) +\x20
                torch.arange(group_size, dtype=torch.int64, \
device=group_pack_index.device)).flatten(-2)
    mlog2log = inverse(log2mlog)

    # Step 2: construct redundant experts within nodes
    # [num_layers * num_nodes, num_logical_experts // num_nodes]
    tokens_per_mlog = weight.gather(-1, mlog2log).view(-1, num_logical_experts // num_nodes)
    phy2mlog, phyrank, mlogcnt = replicate_experts(tokens_per_mlog, num_physical_experts // \
num_nodes)\x20\x20\x20\x20

    # Step 3: pack physical_experts to GPUs
    # [num_layers * num_nodes, num_physical_experts // num_nodes]
    tokens_per_phy = (tokens_per_mlog / mlogcnt).gather(-1, phy2mlog)
    pack_index, rank_in_pack = balanced_packing(tokens_per_phy, num_gpus // num_nodes)
    phy2pphy = pack_index * phy_experts_per_gpu + rank_in_pack
    pphy2phy = inverse(phy2pphy)

    pphy2mlog = phy2mlog.gather(-1, pphy2phy) # [num_layers * num_nodes, num_log_per_nodes]
    pphy2mlog = (pphy2mlog.view(num_layers, num_nodes, -1) +\x20
                 torch.arange(0, num_logical_experts, num_logical_experts // num_nodes,
                              device=group_pack_index.device).view(1, -1, 1)).flatten(-2)
    pphy2log = mlog2log.gather(-1, pphy2mlog)
    pphyrank = phyrank.gather(-1, pphy2phy).view(num_layers, -1)
    logcnt = mlogcnt.view(num_layers, -1).gather(-1, log2mlog)
    return pphy2log, pphyrank, logcnt

def rebalance_experts(weight: torch.Tensor, num_replicas: int, num_groups: int,
                      num_nodes: int, num_gpus: int) -> Tuple[torch.Tensor, torch.Tensor, \
torch.Tensor]:
    """
    Entry point for expert-parallelism load balancer.

    Parameters:
        weight: [layers, num_logical_experts], the load statistics for all logical experts
        num_replicas: number of physical experts, must be a multiple of `num_gpus`
        num_groups: number of expert groups
        num_nodes: number of server nodes, where the intra-node network (e.g, NVLink) is faster
        num_gpus: number of GPUs, must be a multiple of `num_nodes`

    Returns:\x20
        physical_to_logical_map: [layers, num_replicas], the expert index of each replica
        logical_to_physical_map: [layers, num_logical_experts, X], the replica indices for \
each expert
        expert_count: [layers, num_logical_experts], number of physical replicas for each \
logical expert
    """
    num_layers, num_logical_experts = weight.shape
    weight = weight.float().cpu()
    if num_groups % num_nodes == 0:
        # use hierarchical load-balance policy
        phy2log, phyrank, logcnt = rebalance_experts_hierarchical(weight, num_replicas,\x20
                                                                  num_groups, num_nodes, \
num_gpus)
    else:
        # use global load-balance policy
        phy2log, phyrank, logcnt = rebalance_experts_hierarchical(weight, num_replicas, 1, 1, \
num_gpus)
    maxlogcnt = logcnt.max().item()
    log2phy: torch.Tensor = torch.full((num_layers, num_logical_experts, maxlogcnt),\x20
                                       -1, dtype=torch.int64, device=logcnt.device)
    log2phy.view(num_layers, -1).scatter_(-1, phy2log * maxlogcnt + phyrank,\x20
            torch.arange(num_replicas, dtype=torch.int64, \
device=log2phy.device).expand(num_layers, -1))
    return phy2log, log2phy, logcnt

__all__ = ['rebalance_experts']
'''
