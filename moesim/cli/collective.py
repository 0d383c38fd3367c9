"""`moesim collective`: predicted time and nccl-tests bandwidths of one collective.

`--bytes B` is each rank's buffer exactly as nccl-tests counts it (its `size` column), so a
prediction lines up with a row of an nccl-tests log:

- alltoall: each rank's whole send buffer; B/N goes to every peer, itself included
  (that 1/N is a local copy and crosses no link).
- allreduce: the buffer reduced on every rank.
- allgather: the full gathered (output) buffer, N x each rank's contribution.
- reducescatter: the full input buffer, N x each rank's result
  (nccl-tests doc/PERFORMANCE.md: "S is the size in bytes of the total array").

All-reduce runs `--algorithm auto` by default: NVLS (NVLink SHARP) on an NVSwitch whose
fabric block says `nvls: true` when it beats ring, else ring, as NCCL's default picks; the
report names the algorithm that ran.

Bandwidths follow nccl-tests doc/PERFORMANCE.md: algbw = B / t; busbw = algbw x factor with
factor 2(N-1)/N for allreduce and (N-1)/N for alltoall, allgather and reducescatter.
Sizes accept nccl-tests' binary suffixes (1K = 1024, 1M = 2^20, 1G = 2^30, as its `-b`
flag parses them), the explicit KiB/MiB/GiB/TiB, and decimal KB/MB/GB/TB.
"""

from __future__ import annotations

import argparse
import json
import re
from typing import Any

from moesim.engine.collective_model import (
    ALLREDUCE_ALGORITHMS,
    OPS,
    busbw_factor,
    collective_launch_s,
    nccl_tests_alltoall_matrix,
)
from moesim.engine.collectives import predict_collective
from moesim.errors import ConfigError, TopologyError
from moesim.inputs.options import AllreduceAlgorithm
from moesim.inputs.topology import load_topology

__all__ = ["add_parser", "parse_bytes", "collective_report"]

_BINARY = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_DECIMAL = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_SIZE_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgt]?)(i?b?)\s*$", re.I)


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim collective`."""
    parser = commands.add_parser(
        "collective",
        help="predicted time of one collective (nccl-tests conventions)",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--topology", required=True, help="topology YAML file or preset name")
    parser.add_argument("--op", required=True, choices=OPS, help="the collective")
    parser.add_argument("--gpus", type=int, default=None,
                        help="run among the first N GPUs (default: all)")
    parser.add_argument("--bytes", dest="size", required=True,
                        help="per-rank buffer as nccl-tests counts it, e.g. 1M, 256MiB, 1e9")
    parser.add_argument("--fidelity", choices=("des", "analytic"), default="des",
                        help="des: flows with max-min sharing; analytic: bottleneck bound")
    parser.add_argument("--algorithm", choices=ALLREDUCE_ALGORITHMS, default="auto",
                        help="allreduce algorithm; auto: NVLS where the NVSwitch supports it "
                             "and it is faster, else ring, as NCCL picks (other ops always "
                             "use ring / direct)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(handler=_run)


def parse_bytes(text: str) -> float:
    """Bytes from '4096', '1e9', '1M' (2^20, nccl-tests), '256MiB' (binary) or '1GB' (decimal)."""
    match = _SIZE_RE.match(text)
    if not match:
        raise ConfigError(
            f"--bytes: cannot read '{text}'; give a number with an optional suffix "
            "such as 4096, 1M, 256MiB or 1GB"
        )
    number, prefix, unit = float(match[1]), match[2].lower(), match[3].lower()
    if unit == "b" and prefix:  # KB, MB, GB, TB: decimal
        return number * _DECIMAL[prefix]
    return number * _BINARY[prefix]  # K, M, G, KiB, MiB, ... and plain bytes: binary


def collective_report(
    topology: str, op: str, gpus: int | None, size_bytes: float, fidelity: str,
    algorithm: AllreduceAlgorithm,
) -> dict[str, Any]:
    """Predict one collective and return the nccl-tests style figures (seconds, bytes, B/s)."""
    topo = load_topology(topology)
    n = topo.num_gpus if gpus is None else gpus
    if not 1 <= n <= topo.num_gpus:
        raise TopologyError(
            f"--gpus {n}: topology '{topology}' has {topo.num_gpus} GPUs; "
            f"choose 1..{topo.num_gpus}"
        )
    if size_bytes <= 0:
        raise ConfigError(f"--bytes must be positive, got {size_bytes:g}")
    ranks = list(range(n))
    if op == "alltoall":
        args: dict[str, Any] = {"bytes_matrix": nccl_tests_alltoall_matrix(n, size_bytes)}
    else:
        args = {"size_bytes": size_bytes}
    launch_s = collective_launch_s(topo)
    result = predict_collective(
        topo, op, ranks, algorithm=algorithm, fidelity=fidelity, launch_s=launch_s, **args
    )
    algbw = size_bytes / result.time_s
    return {
        "op": op,
        "gpus": n,
        "bytes": size_bytes,
        "time_s": result.time_s,
        "algbw_bytes_per_s": algbw,
        "busbw_bytes_per_s": algbw * busbw_factor(op, n),
        "algorithm": result.algorithm,
        "fidelity": fidelity,
        "topology": topology,
        "network_bytes": result.network_bytes,
        "launch_s": launch_s,
    }


def _run(args: argparse.Namespace) -> int:
    report = collective_report(
        args.topology, args.op, args.gpus, parse_bytes(args.size), args.fidelity, args.algorithm
    )
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['op']} ({report['algorithm']}, {report['fidelity']}) on {report['gpus']} "
          f"GPUs of {report['topology']}")
    print(f"  size     {report['bytes']:>14,.0f} B")
    print(f"  time     {report['time_s'] * 1e6:>14.2f} us")
    print(f"  algbw    {report['algbw_bytes_per_s'] / 1e9:>14.2f} GB/s")
    print(f"  busbw    {report['busbw_bytes_per_s'] / 1e9:>14.2f} GB/s")
    return 0
