"""`moesim kernel`: the predicted time of one operation on one rank (`time_s`).

Hold it against your own microbenchmarks as `moesim collective` is held against nccl-tests:
`--op moe` is one rank's expert compute of a whole MoE layer under a balanced routing of
`--tokens` tokens; `--op gemm` one GEMM of `--tokens` rows (default weight: one expert's gate-up
shard; `--n/--k` for another); `--op attention` one block's attention kernel (prefill: one
sequence of `--tokens` after `--context` cached; decode: `--tokens` sequences at `--context`).
Weights stay warm in L2 between repeats, as a microbenchmark runs them (`--cold-l2`: not).
"""

from __future__ import annotations

import argparse
import json
import math

from moesim.cli.commands import command_help
from moesim.cli.numbers import int_in
from moesim.errors import ConfigError, TopologyError
from moesim.inputs.config import MAX_CONTEXT_TOKENS
from moesim.inputs.options import ACT_DTYPE_BYTES, WEIGHT_DTYPE_BYTES, Precision
from moesim.inputs.topology_spec import list_gpus, load_gpu

__all__ = ["add_parser"]

# Rows of one kernel (tokens, GEMM n and k): 16M is ~100x the largest dimension of any model
# (DeepSeek-V3 hidden 7168, vocab 129280) or benchmark batch; beyond it the figures describe no
# kernel anyone runs.
MAX_KERNEL_DIM = 1 << 24


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `moesim kernel`."""
    parser = commands.add_parser("kernel", help=command_help("kernel"),
                                 description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--gpu", help=f"GPU from the catalog: {', '.join(list_gpus())}")
    where.add_argument("--topology", help="topology preset or YAML (its GPU)")
    parser.add_argument("--op", required=True, choices=("moe", "gemm", "attention"))
    parser.add_argument("--model", default="mixtral-8x7b", help="preset, HF config or YAML")
    parser.add_argument("--tokens", type=int_in(1, MAX_KERNEL_DIM), required=True,
                        help="tokens (GEMM rows; decode attention: sequences)")
    parser.add_argument("--context", type=int_in(0, MAX_CONTEXT_TOKENS), default=0,
                        help="cached tokens (attention)")
    parser.add_argument("--phase", choices=("prefill", "decode"), default="decode",
                        help="attention kernel")
    parser.add_argument("--placement", default="TP1", help="layout whose shard one rank runs "
                        "(TP8: experts split 8 ways; EP8: 1/8 of the experts)")
    parser.add_argument("--weight-dtype", default="bf16", choices=tuple(WEIGHT_DTYPE_BYTES))
    parser.add_argument("--expert-weight-dtype", default=None,
                        choices=tuple(WEIGHT_DTYPE_BYTES))
    parser.add_argument("--act-dtype", default="bf16", choices=tuple(ACT_DTYPE_BYTES))
    parser.add_argument("--kv-dtype", default=None, choices=tuple(ACT_DTYPE_BYTES))
    parser.add_argument("--kernels", default="auto", help="vllm, sglang, trtllm, roofline, "
                        "auto or a profile YAML")
    parser.add_argument("--n", type=int_in(1, MAX_KERNEL_DIM), default=None,
                        help="GEMM output columns")
    parser.add_argument("--k", type=int_in(1, MAX_KERNEL_DIM), default=None, help="GEMM depth")
    parser.add_argument("--cold-l2", action="store_true", help="weights not in L2")
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from moesim.engine.cost import compute_model
    from moesim.inputs.model_files import load_model
    from moesim.inputs.topology import load_topology
    from moesim.planning.kernel_op import predict_op
    from moesim.traffic.placement import check_tp_fits_model, parse_placement

    for flag in ("tokens", "context", "n", "k"):
        value = getattr(args, flag)
        if value is not None and (value < 0 or (flag == "tokens" and value < 1)):
            raise ConfigError(f"--{flag}: must be {'>= 1' if flag == 'tokens' else '>= 0'}, "
                              f"got {value}")
    if args.op == "attention" and args.phase == "decode" and args.context < 1:
        raise ConfigError("--context: decode attention needs cached tokens (--context >= 1)")
    gpu = load_gpu(args.gpu) if args.gpu else load_topology(args.topology).gpu_spec
    model = load_model(args.model)
    par = parse_placement(args.placement)
    if model.num_experts % par.moe_ep:
        raise ConfigError(f"--placement: {model.num_experts} experts do not split over "
                          f"moe_ep={par.moe_ep}")
    check_tp_fits_model(par, model.num_attention_heads, model.expert_ffn_size)
    prec = Precision(weight=args.weight_dtype, expert_weight=args.expert_weight_dtype,
                     act=args.act_dtype, kv=args.kv_dtype)
    cm = compute_model(args.kernels, gpu, warm_l2=not args.cold_l2)
    result = predict_op(args.op, cm, model, par, prec, tokens=args.tokens, context=args.context,
                        phase=args.phase, n=args.n, k=args.k)
    if not math.isfinite(result.time_s):
        raise TopologyError(f"{args.gpu or args.topology}: the predicted time came out as "
                            f"{result.time_s!r} s, not a finite time; a peak, bandwidth or "
                            "efficiency of the GPU spec is far out of range")
    facts = {**result.to_json(), "gpu": gpu.name, "profile": cm.profile, "model": model.name,
             "placement": par.label, "tokens": args.tokens, "context": args.context,
             "warm_l2": cm.warm_l2}
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        print(f"{args.op} on {gpu.name} ({cm.profile}: {result.kernel}), {model.name} "
              f"{par.label}, {args.tokens} tokens: {result.time_s * 1e6:.1f} us "
              f"({result.flops / max(result.time_s, 1e-30) / 1e12:.1f} TFLOP/s, "
              f"{result.bytes_moved / max(result.time_s, 1e-30) / 1e9:.0f} GB/s)")
    return 0
