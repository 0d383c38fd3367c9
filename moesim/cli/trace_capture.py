"""`moesim trace capture`: record a real model's router choices into a `.npz` trace.

Needs the optional extra `pip install 'moesim[live]'` (torch, transformers); without it the
command fails with one line saying so. The `moesim trace` group calls `add_parser`.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from moesim.cli.numbers import int_in, non_negative_int, positive_int
from moesim.cli.outputs import check_output

__all__ = ["add_parser", "run_capture"]


# Token positions are int32 in traces (moesim.trace.format), and a capture runs one forward
# per decode token: 2**31 tokens is far beyond any capture (and the trace's memory maps).
MAX_CAPTURE_TOKENS = 2**31 - 1
_DEVICE = re.compile(r"cpu|mps|cuda(:\d{1,4})?")


def device_name(text: str) -> str:
    """An argparse type: a torch device this command can use, checked without torch."""
    device = text.strip().lower()
    if not _DEVICE.fullmatch(device):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or mps, got {text!r}")
    return device


def add_parser(trace_commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `capture` under the `moesim trace` group's subparsers."""
    parser = trace_commands.add_parser(
        "capture",
        help="capture router traces from a Hugging Face MoE model (needs moesim[live])",
        description="Run prompts through a transformers MoE model (Mixtral, Qwen-MoE, OLMoE) "
        "and save each token's top-k experts per MoE layer as a .npz trace.",
    )
    parser.add_argument("--model", required=True, help="hub id (cached) or local folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--text",
        type=Path,
        action="append",
        metavar="FILE",
        help="a UTF-8 text file, one prompt per file (repeatable)",
    )
    source.add_argument(
        "--dataset-jsonl", type=Path, metavar="FILE", help="JSON lines, one prompt per line"
    )
    parser.add_argument("--field", default="text", help="JSONL field holding the prompt")
    parser.add_argument(
        "--max-tokens",
        type=int_in(1, MAX_CAPTURE_TOKENS),
        default=8192,
        help="cap on traced tokens, prefill + decode (default 8192)",
    )
    parser.add_argument(
        "--max-prompt-tokens",
        type=positive_int,
        default=4096,
        help="truncate each prompt to this many tokens (default 4096)",
    )
    parser.add_argument(
        "--generate",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="greedy-decode N tokens per prompt and trace them too",
    )
    parser.add_argument("--device", type=device_name, default="cpu",
                        help="cpu, cuda, cuda:N or mps (default cpu)")
    parser.add_argument("--dtype", default="bf16", choices=("bf16", "fp32", "fp16", "fp8"))
    parser.add_argument(
        "--keep-logits",
        action="store_true",
        help="also write raw router logits to OUT.logits.npy [L, T, E]",
    )
    parser.add_argument("--dataset-name", default="", help="dataset label for the metadata")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.npz",
                        help="the trace: a .npz in an existing folder (a name without a "
                        "suffix gets .npz)")
    parser.set_defaults(handler=run_capture)


class _ProgressLine:
    """Prints `capture: done/total tokens` to stderr at most twice a second."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.last_print = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self.last_print < 0.5:
            return
        self.last_print = now
        rate = done / max(now - self.started, 1e-9)
        end = "\n" if done >= total else ""
        print(
            f"\rcapture: {done}/{total} tokens ({100 * done / total:.0f}%), {rate:.0f} tokens/s",
            end=end,
            file=sys.stderr,
            flush=True,
        )


def run_capture(args: argparse.Namespace) -> int:
    """Load the model, capture the trace and print a one-line summary."""
    from moesim.trace.capture import (
        capture_trace,
        check_budget,
        load_model,
        read_jsonl_texts,
        read_text_prompts,
    )

    # Every input is checked before the model loads (a large model takes minutes).
    check_budget(args.max_tokens, args.generate, args.max_prompt_tokens)
    texts: Iterable[str]
    if args.dataset_jsonl is not None:
        # each prompt takes at least 1 + --generate tokens: no more can fit in --max-tokens
        texts = read_jsonl_texts(args.dataset_jsonl, args.field,
                                 check_first=args.max_tokens // (args.generate + 1))
        dataset = args.dataset_name or str(args.dataset_jsonl)
    else:
        texts = read_text_prompts(args.text)
        dataset = args.dataset_name or ",".join(str(path) for path in args.text)
    check_output(args.output, "-o/--output", suffixes=(".npz", ""), folder_must_exist=True)
    model, tokenizer = load_model(args.model, device=args.device, dtype=args.dtype)
    report = capture_trace(
        model,
        tokenizer,
        texts,
        args.max_tokens,
        out_path=args.output,
        generate_tokens=args.generate,
        device=args.device,
        keep_logits=args.keep_logits,
        progress=_ProgressLine(),
        dataset=dataset,
        max_prompt_tokens=args.max_prompt_tokens,
    )
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(
        f"wrote {report.out_path}: {report.num_tokens} tokens ({report.prefill_tokens} prefill"
        f" + {report.decode_tokens} decode) in {report.num_sequences} sequences, "
        f"{report.num_moe_layers} MoE layers, top-{report.top_k} of {report.num_experts} "
        f"experts, {report.tokens_per_s:.0f} tokens/s"
    )
    return 0
