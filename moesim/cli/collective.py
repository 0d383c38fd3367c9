"""`moesim collective`: predicted time and nccl-tests bandwidths of one collective.

`--bytes B` is each rank's buffer exactly as nccl-tests counts it (its `size` column), so a
prediction lines up with a row of an nccl-tests log:

- alltoall: each rank's whole send buffer; B/N goes to every peer, itself included
  (that 1/N is a local copy and crosses no link).
- allreduce: the buffer reduced on every rank.
- allgather: the full gathered (output) buffer, N x each rank's contribution.
- reducescatter: the full input buffer, N x each rank's result
  (nccl-tests doc/PERFORMANCE.md: "S is the size in bytes of the total array").

By default the algorithm and protocol are the ones NCCL's own tuner picks for the size and GPU
count (`moesim.engine.nccl_tuner`: ring / tree / NVLS all-reduce, LL / LL128 / Simple);
`--algorithm` and `--protocol` force one, as NCCL_ALGO / NCCL_PROTO do. The report names
what ran. `--sweep 1K:1G` prints one row per size, laid out like nccl-tests' tables, so a
prediction can be held against an `*_perf` log line by line; `--gpus-per-process 8` matches a
log run with `-g 8` (one process driving all GPUs, which launches them one after another).

Bandwidths follow nccl-tests doc/PERFORMANCE.md: algbw = B / t; busbw = algbw x factor with
factor 2(N-1)/N for allreduce and (N-1)/N for alltoall, allgather and reducescatter.
Sizes accept nccl-tests' binary suffixes (1K = 1024, 1M = 2^20, 1G = 2^30, as its `-b`
flag parses them), the explicit KiB/MiB/GiB/TiB, and decimal KB/MB/GB/TB.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

from moesim.cli.commands import command_help
from moesim.cli.numbers import int_in
from moesim.errors import ConfigError, TopologyError
from moesim.inputs.options import CollectiveOp, choices
from moesim.inputs.topology_spec import MAX_TOPOLOGY_GPUS

__all__ = ["add_parser", "parse_bytes", "parse_sweep", "collective_report", "collective_sweep",
           "sweep_table", "ALGORITHM_CHOICES", "PROTOCOL_CHOICES"]

# the collectives (as moesim.engine.collective_model.OPS; the engine is imported by the work only)
OPS: tuple[str, ...] = choices(CollectiveOp)
ALGORITHM_CHOICES = ("auto", "ring", "tree", "nvls", "direct")
PROTOCOL_CHOICES = ("auto", "LL", "LL128", "Simple")

_BINARY = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)(i?b?)\s*$", re.I)
# Largest buffer a size flag takes: 1 PiB, ~5000x the memory of any GPU (B200: 192 GB); the
# largest nccl-tests runs go to 16-64 GiB. Above it a size is a typo, and far above it the
# figures overflow.
MAX_BYTES = float(2**50)
# Rank pairs of one collective (N x N): the all-to-all's byte matrix and the des's flows grow
# with them; 2**22 pairs is 2048 GPUs, whose all-to-all already takes hours in des (256 GPUs:
# minutes). Beyond it a run would allocate the matrix and never finish.
MAX_COLLECTIVE_PAIRS = 1 << 22
# GPUs one process drives (nccl-tests -g G): servers hold at most 72 GPUs (GB200 NVL72).
MAX_GPUS_PER_PROCESS = 1024


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim collective`."""
    parser = commands.add_parser(
        "collective",
        help=command_help("collective"),
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--topology", required=True, help="topology YAML file or preset name")
    parser.add_argument("--op", required=True, choices=OPS, help="the collective")
    parser.add_argument("--gpus", type=int_in(1, MAX_TOPOLOGY_GPUS), default=None,
                        help="run among the first N GPUs (default: all)")
    size = parser.add_mutually_exclusive_group(required=True)
    size.add_argument("--bytes", dest="size",
                      help="per-rank buffer as nccl-tests counts it, e.g. 1M, 256MiB, 1e9")
    size.add_argument("--sweep", metavar="LO:HI[:FACTOR]",
                      help="every size from LO to HI, times FACTOR (default 2) each row, as "
                           "nccl-tests -b LO -e HI -f FACTOR prints them, e.g. 1K:1G")
    parser.add_argument("--fidelity", choices=("des", "analytic"), default="des",
                        help="des: flows with max-min sharing; analytic: bottleneck bound")
    parser.add_argument("--algorithm", choices=ALGORITHM_CHOICES, default="auto",
                        help="auto: the algorithm NCCL's tuner picks (ring, tree or NVLS "
                             "all-reduce; ring all-gather / reduce-scatter; direct "
                             "all-to-all); or force one, as NCCL_ALGO does")
    parser.add_argument("--protocol", choices=PROTOCOL_CHOICES, default="auto",
                        help="auto: the protocol NCCL picks for the size; or force LL, LL128 "
                             "or Simple, as NCCL_PROTO does")
    parser.add_argument("--gpus-per-process", type=int_in(1, MAX_GPUS_PER_PROCESS), default=1,
                        metavar="G",
                        help="GPUs one process drives (nccl-tests -g G): each extra GPU adds "
                             "the topology's multi_gpu_launch_s to the launch (default 1)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_run)


def parse_bytes(text: str, flag: str = "--bytes", *, allow_zero: bool = False) -> float:
    """Bytes from '4096', '1e9', '1M' (2^20, nccl-tests), '256MiB' (binary) or '1GB' (decimal);
    a ConfigError naming `flag` unless it is finite, positive (or 0 with `allow_zero`) and at
    most MAX_BYTES."""
    match = _SIZE_RE.match(text)
    if not match:
        sign = text.strip().startswith("-")
        raise ConfigError(
            f"{flag}: {'a size cannot be negative' if sign else 'cannot read'} '{text}'; give a "
            f"{'' if allow_zero else 'positive '}number of bytes with an optional suffix "
            "such as 4096, 1M, 256MiB or 1GB"
        )
    number, prefix, unit = float(match[1]), match[2].lower(), match[3].lower()
    if unit == "b" and prefix:  # KB, MB, GB, TB: decimal
        size = number * _DECIMAL[prefix]
    else:
        size = number * _BINARY[prefix]  # K, M, G, KiB, MiB, ... and plain bytes: binary
    if not size <= MAX_BYTES:  # also NaN and infinity (1e999)
        raise ConfigError(f"{flag}: {text} is above the {MAX_BYTES:.0f} bytes (1 PiB) a buffer "
                          "may have; give the per-rank buffer in bytes, e.g. 1G")
    if size <= 0 and not (allow_zero and size == 0):
        raise ConfigError(f"{flag}: the size must be positive, got {text}; e.g. 1K or 1M")
    return size


def parse_sweep(text: str) -> list[float]:
    """Sizes of `LO:HI[:FACTOR]` as nccl-tests steps them: LO, LO*F, ... up to HI."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise ConfigError(f"--sweep: cannot read '{text}'; give LO:HI or LO:HI:FACTOR, "
                          "e.g. 1K:1G or 8:8G:4")
    low, high = parse_bytes(parts[0], "--sweep"), parse_bytes(parts[1], "--sweep")
    factor = float(parts[2]) if len(parts) == 3 and _is_number(parts[2]) else 2.0
    if len(parts) == 3 and not _is_number(parts[2]):
        raise ConfigError(f"--sweep: factor '{parts[2]}' is not a number; e.g. 1K:1G:2")
    if not math.isfinite(factor):
        raise ConfigError(f"--sweep: factor '{parts[2]}' is not finite; e.g. 1K:1G:2")
    if not 0 < low <= high or factor <= 1:
        raise ConfigError(f"--sweep {text}: need 0 < LO <= HI and FACTOR > 1")
    sizes = [low]
    while sizes[-1] * factor <= high * (1 + 1e-12):
        sizes.append(sizes[-1] * factor)
    if len(sizes) > 200:
        raise ConfigError(f"--sweep {text}: {len(sizes)} sizes; use a larger FACTOR "
                          "(at most 200 rows)")
    return sizes


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def collective_report(
    topology: str, op: str, gpus: int | None, size_bytes: float, fidelity: str,
    algorithm: str = "auto", protocol: str = "auto", gpus_per_process: int = 1,
) -> dict[str, Any]:
    """Predict one collective and return the nccl-tests style figures (seconds, bytes, B/s)."""
    return collective_sweep(topology, op, gpus, [size_bytes], fidelity, algorithm, protocol,
                            gpus_per_process)[0]


def collective_sweep(
    topology: str, op: str, gpus: int | None, sizes: list[float], fidelity: str,
    algorithm: str = "auto", protocol: str = "auto", gpus_per_process: int = 1,
) -> list[dict[str, Any]]:
    """`collective_report` of every size, the topology loaded once."""
    from moesim.engine.collective_model import busbw_factor, nccl_tests_alltoall_matrix
    from moesim.engine.collectives import predict_collective
    from moesim.engine.protocols import plan_call
    from moesim.inputs.topology import load_topology

    topo = load_topology(topology)
    n = topo.num_gpus if gpus is None else gpus
    if not 1 <= n <= topo.num_gpus:
        raise TopologyError(
            f"--gpus {n}: topology '{topology}' has {topo.num_gpus} GPUs; "
            f"choose 1..{topo.num_gpus}"
        )
    if not 1 <= gpus_per_process <= n:
        raise ConfigError(f"--gpus-per-process {gpus_per_process}: one process drives 1 to the "
                          f"collective's {n} GPUs (nccl-tests -g); give at most {n}")
    if n * n > MAX_COLLECTIVE_PAIRS:
        raise ConfigError(
            f"--gpus {n}: a collective among {n:,} GPUs has {n:,} x {n:,} = {n * n:.3g} rank "
            f"pairs, above the {MAX_COLLECTIVE_PAIRS:,} moesim simulates (the all-to-all's byte "
            "matrix and the flows grow with them); give --gpus 2048 or fewer")
    _check_algorithm(op, algorithm, protocol)
    ranks = list(range(n))
    rows = []
    for size_bytes in sizes:
        if not 0 < size_bytes <= MAX_BYTES:
            raise ConfigError(f"--bytes must be positive and at most {MAX_BYTES:.0f} (1 PiB), "
                              f"got {size_bytes:g}")
        if op == "alltoall":
            matrix = nccl_tests_alltoall_matrix(n, size_bytes)
            args: dict[str, Any] = {"bytes_matrix": matrix}
            call_bytes = size_bytes * (n - 1) / n
        else:
            args = {"size_bytes": size_bytes}
            call_bytes = size_bytes
        try:
            call = plan_call(topo, op, ranks, call_bytes,
                             algorithm="auto" if algorithm == "direct" else algorithm,
                             protocol=protocol, gpus_per_process=gpus_per_process)
        except ValueError as exc:
            raise ConfigError(f"--protocol/--algorithm: {exc}") from None
        result = predict_collective(topo, op, ranks, fidelity=fidelity, call=call, **args)
        if not math.isfinite(result.time_s):
            raise TopologyError(
                f"topology '{topology}': {op} of {size_bytes:g} bytes on {n} GPUs came out as "
                f"{result.time_s!r} s, not a finite time; a bandwidth, latency or efficiency "
                "of the topology is far out of range")
        algbw = size_bytes / result.time_s if result.time_s > 0 else float("inf")
        rows.append({
            "op": op,
            "gpus": n,
            "bytes": size_bytes,
            "time_s": result.time_s,
            "algbw_bytes_per_s": algbw,
            "busbw_bytes_per_s": algbw * busbw_factor(op, n),
            "algorithm": result.algorithm,
            "protocol": result.protocol,
            "fidelity": fidelity,
            "topology": topology,
            "network_bytes": result.network_bytes,
            "launch_s": call.launch_s,
            "gpus_per_process": gpus_per_process,
        })
    return rows


def _check_algorithm(op: str, algorithm: str, protocol: str) -> None:
    if op == "alltoall" and algorithm not in ("auto", "direct"):
        raise ConfigError(f"--algorithm {algorithm}: all-to-all runs direct (NCCL's "
                          "send/recv to every peer); use --algorithm direct or auto")
    if op != "alltoall" and algorithm == "direct":
        raise ConfigError(f"--algorithm direct is all-to-all's; {op} runs ring, tree or nvls "
                          "(or auto)")
    if op != "allreduce" and algorithm in ("tree", "nvls"):
        raise ConfigError(f"--algorithm {algorithm} is an all-reduce algorithm here; {op} "
                          "runs ring (or auto)")
    if op == "alltoall" and protocol == "LL128":
        raise ConfigError("--protocol LL128: all-to-all runs on NCCL's send/recv, which uses "
                          "LL or Simple only; use --protocol LL, Simple or auto")


def _run(args: argparse.Namespace) -> int:
    sizes = parse_sweep(args.sweep) if args.sweep else [parse_bytes(args.size)]
    rows = collective_sweep(args.topology, args.op, args.gpus, sizes, args.fidelity,
                            args.algorithm, args.protocol, args.gpus_per_process)
    if args.json:
        print(json.dumps(rows if args.sweep else rows[0], indent=2))
        return 0
    if args.sweep:
        print(sweep_table(rows))
        return 0
    report = rows[0]
    print(f"{report['op']} ({report['algorithm']}/{report['protocol']}, {report['fidelity']}) "
          f"on {report['gpus']} GPUs of {report['topology']}")
    print(f"  size     {report['bytes']:>14,.0f} B")
    print(f"  time     {report['time_s'] * 1e6:>14.2f} us")
    print(f"  algbw    {report['algbw_bytes_per_s'] / 1e9:>14.2f} GB/s")
    print(f"  busbw    {report['busbw_bytes_per_s'] / 1e9:>14.2f} GB/s")
    return 0


def sweep_table(rows: list[dict[str, Any]]) -> str:
    """Rows laid out as nccl-tests prints them (size B, time us, algbw and busbw GB/s), plus
    the algorithm and protocol each size ran on."""
    first = rows[0]
    lines = [
        f"# moesim collective: {first['op']} on {first['gpus']} GPUs of {first['topology']} "
        f"({first['fidelity']})",
        f"# {'size':>12} {'time':>10} {'algbw':>8} {'busbw':>8}  algorithm/protocol",
        f"# {'(B)':>12} {'(us)':>10} {'(GB/s)':>8} {'(GB/s)':>8}",
    ]
    for row in rows:
        lines.append(
            f"  {row['bytes']:>12.0f} {row['time_s'] * 1e6:>10.2f} "
            f"{row['algbw_bytes_per_s'] / 1e9:>8.2f} {row['busbw_bytes_per_s'] / 1e9:>8.2f}  "
            f"{row['algorithm']}/{row['protocol']}"
        )
    return "\n".join(lines)
