"""Trace capture: run a Hugging Face transformers MoE model and record each token's routing.

A capture runs every prompt through the model with `output_router_logits=True` (prefill)
and, when asked, greedy-decodes a fixed number of tokens with the KV cache, one forward per
step. For every MoE layer it recomputes the routing from the router logits the way the
model routes: softmax over all experts, top-k, then renormalise the k weights when the
model does (Mixtral always; Qwen-MoE / OLMoE when `config.norm_topk_prob`). Dense decoder
layers (e.g. Qwen-MoE's `decoder_sparse_step`, `mlp_only_layers`) have no router; they are
skipped and named in the trace metadata (`moe_layers`, `skipped_dense_layers`).

Streaming and memory bound: the token budget is planned up front (prompts are tokenised
lazily until `max_tokens` is reached), so the trace's size T is known before the first
forward. Each forward's routing is written straight into `.npy` memory maps in a temporary
directory beside the output file, and `save_trace` then compresses them with numpy's
buffered writer. Heap memory beyond the model is therefore bounded by one prompt's forward
(activations, KV cache and its `[L, t, E]` router logits) plus numpy's 16 MiB write buffer,
whatever T is; the trace itself lives in the page cache of the memory-mapped files.

torch and transformers are optional (`pip install 'moesim[live]'`): they are imported only
inside the functions that need them.
"""

from __future__ import annotations

import itertools
import json
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from moesim import __version__
from moesim.errors import TraceError
from moesim.inputs.text import utf8_text
from moesim.trace.format import RouterTrace, save_trace

__all__ = [
    "CaptureReport",
    "RoutingSpec",
    "capture_trace",
    "check_budget",
    "load_model",
    "read_jsonl_texts",
    "read_text_prompts",
    "routing_spec",
]

LIVE_INSTALL = "pip install 'moesim[live]'"
ProgressFn = Callable[[int, int], None]
Prompt = str | Sequence[int] | np.ndarray
RoutedChunk = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # experts, weights, logits


@dataclass(frozen=True)
class RoutingSpec:
    """How a model routes: experts, top-k, renormalisation and which decoder layers are MoE."""

    num_experts: int
    top_k: int
    renormalise: bool
    num_decoder_layers: int
    moe_layers: tuple[int, ...]  # decoder-layer index of each router, in forward order


@dataclass(frozen=True)
class CaptureReport:
    """What a capture wrote and how fast it ran."""

    out_path: Path
    num_sequences: int
    prefill_tokens: int
    decode_tokens: int
    num_moe_layers: int
    skipped_dense_layers: tuple[int, ...]
    top_k: int
    num_experts: int
    capture_s: float  # forwards and routing only
    elapsed_s: float  # including assembling and compressing the .npz
    logits_path: Path | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def num_tokens(self) -> int:
        """Tokens in the trace (prefill + decode)."""
        return self.prefill_tokens + self.decode_tokens

    @property
    def tokens_per_s(self) -> float:
        """Capture throughput: traced tokens per second of forward passes."""
        return self.num_tokens / self.capture_s if self.capture_s > 0 else float("inf")


def _import_live(what: str) -> tuple[Any, Any]:
    """Import torch and transformers, or raise TraceError telling how to install them."""
    try:
        import torch
        import transformers
    except ImportError:
        raise TraceError(
            f"{what} needs torch and transformers: {LIVE_INSTALL} "
            "(the simulator itself runs without them)"
        ) from None
    return torch, transformers


def _first_attr(config: Any, names: Sequence[str]) -> Any:
    """The first of `names` set (not None) on `config`, else None."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None


def _moe_layer_ids(config: Any, num_layers: int) -> tuple[int, ...]:
    """Decoder layers that have a router, from the config's sparse-layer fields."""
    dense = set(getattr(config, "mlp_only_layers", None) or ())
    step = int(getattr(config, "decoder_sparse_step", None) or 1)
    first_dense = int(getattr(config, "first_k_dense_replace", None) or 0)
    return tuple(
        i for i in range(num_layers) if i not in dense and (i + 1) % step == 0 and i >= first_dense
    )


def _check_softmax_routing(config: Any) -> None:
    """Refuse models whose router is not softmax then top-k (their weights would be wrong)."""
    scoring = getattr(config, "scoring_func", None)
    groups = getattr(config, "n_group", None)
    if (scoring not in (None, "softmax")) or (groups not in (None, 1)):
        raise TraceError(
            f"model_type '{config.model_type}' routes with scoring_func={scoring!r}, "
            f"n_group={groups!r}; capture reproduces softmax-then-top-k routers only "
            "(Mixtral, Qwen-MoE, OLMoE)"
        )


def routing_spec(config: Any) -> RoutingSpec:
    """Read experts, top-k, renormalisation and MoE layers from a transformers config."""
    num_experts = _first_attr(config, ("num_local_experts", "num_experts", "n_routed_experts"))
    top_k = _first_attr(config, ("num_experts_per_tok", "moe_top_k"))
    model_type = getattr(config, "model_type", "?")
    if not num_experts or not top_k:
        raise TraceError(
            f"model_type '{model_type}' config has no num_local_experts/num_experts or "
            "num_experts_per_tok; capture needs a Mixture-of-Experts model"
        )
    _check_softmax_routing(config)
    norm = getattr(config, "norm_topk_prob", None)
    num_layers = int(config.num_hidden_layers)
    return RoutingSpec(
        num_experts=int(num_experts),
        top_k=int(top_k),
        renormalise=True if norm is None else bool(norm),  # Mixtral has no flag: always renorm
        num_decoder_layers=num_layers,
        moe_layers=_moe_layer_ids(config, num_layers),
    )


# Integers in a dataset line longer than int64's 19 digits are refused by name (Python refuses
# to build one of 4300+ digits with a bare ValueError).
_MAX_INT_DIGITS = 19




class _HugeInteger(ValueError):
    """An integer literal longer than _MAX_INT_DIGITS digits."""


def _json_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise _HugeInteger(text)
    return int(text)


def _utf8(raw: bytes, where: str, line: int | None = None) -> str:
    """`raw` (a file, or its line `line`) as UTF-8 text, or one TraceError naming `where`."""
    return utf8_text(raw, where, TraceError, line=line)


def read_text_prompts(paths: Sequence[str | Path], flag: str = "--text") -> list[str]:
    """The prompt of each UTF-8 text file (one prompt a file), read and checked now: a missing,
    binary, UTF-16 or non-UTF-8 file, or one holding only whitespace, is one TraceError naming
    `flag` and the file."""
    prompts = []
    for path in map(Path, paths):
        where = f"{flag} file {path}"
        if not path.is_file():
            raise TraceError(f"{where} does not exist; pass an existing text file")
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise TraceError(f"cannot read {where}: {exc.strerror}") from None
        text = _utf8(raw, where)
        if not text.strip():
            raise TraceError(f"{where} is empty (or only whitespace); write the prompt in it")
        prompts.append(text)
    return prompts


def _jsonl_prompts(path: Path, text_field: str) -> Iterator[str]:
    """The checked string `text_field` of each non-blank line of a JSON-lines dataset."""
    with path.open("rb") as lines:
        for line_no, raw in enumerate(lines, start=1):
            line = _utf8(raw, f"dataset file {path}", line_no)
            if not line.strip():
                continue
            try:
                record = json.loads(line, parse_int=_json_int)
            except json.JSONDecodeError as exc:
                raise TraceError(
                    f"{path}:{line_no}: not valid JSON ({exc.msg}); each line must be one object"
                ) from None
            except _HugeInteger:
                raise TraceError(f"{path}:{line_no}: holds an integer of more than "
                                 f"{_MAX_INT_DIGITS} digits; each line must be one object "
                                 f"with a string field '{text_field}'") from None
            except RecursionError:
                raise TraceError(f"{path}:{line_no}: nests lists or objects too deeply to "
                                 "read; each line must be one flat object") from None
            text = record.get(text_field) if isinstance(record, dict) else None
            if not isinstance(text, str):
                got = ("not an object" if not isinstance(record, dict) else
                       "it is missing" if text_field not in record else
                       f"it is {type(text).__name__}")
                raise TraceError(
                    f"{path}:{line_no}: no string field '{text_field}' ({got}); pick the "
                    "prompt's field with --field"
                )
            if not text.strip():
                raise TraceError(f"{path}:{line_no}: field '{text_field}' is an empty prompt; "
                                 "drop the line or give it text")
            yield text


def read_jsonl_texts(path: str | Path, text_field: str = "text",
                     check_first: int | None = None) -> Iterator[str]:
    """The string `text_field` of each non-blank line of a JSON-lines dataset, in order.

    The first `check_first` prompts (None: all of them) are read and checked before this
    returns, so a bad dataset fails before any model is loaded; the rest are read lazily as
    they are used. Every defect is one TraceError naming the file and line: not UTF-8 text, not
    JSON, nesting too deep, no string `text_field`, an empty prompt, or no prompt at all."""
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"dataset file {path} does not exist; pass an existing .jsonl file")
    prompts = _jsonl_prompts(path, text_field)
    first = list(itertools.islice(prompts, check_first))
    if not first:
        raise TraceError(f"dataset file {path} holds no prompt; write one JSON object a line "
                         f"with a string field '{text_field}'")
    return itertools.chain(first, prompts)


def _token_ids(prompt: Prompt, tokenizer: Any, index: int, vocab_size: int) -> np.ndarray:
    """One prompt as a 1-D int64 array of token ids, validated against the vocabulary."""
    if isinstance(prompt, str):
        if tokenizer is None:
            raise TraceError(f"prompt {index} is text but no tokenizer was given; pass token ids")
        prompt = tokenizer(prompt)["input_ids"]
    ids = np.asarray(prompt)
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)):
        raise TraceError(f"prompt {index} must be a string or a flat list of token ids")
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise TraceError(
            f"prompt {index} holds token ids outside [0, {vocab_size}) of the model's vocabulary"
        )
    return ids.astype(np.int64)


def _plan_prompts(
    texts: Iterable[Prompt],
    tokenizer: Any,
    vocab_size: int,
    max_tokens: int,
    generate_tokens: int,
    max_prompt_tokens: int | None,
) -> list[np.ndarray]:
    """Tokenise prompts in order until prefill + decode tokens fill `max_tokens`."""
    plan: list[np.ndarray] = []
    left = max_tokens
    for index, prompt in enumerate(texts):
        room = min(left - generate_tokens, max_prompt_tokens or left)
        if room <= 0:
            break
        ids = _token_ids(prompt, tokenizer, index, vocab_size)[:room]
        if ids.size:
            plan.append(ids)
            left -= ids.size + generate_tokens
    return plan


def _route(
    router_logits: Sequence[Any], spec: RoutingSpec, torch: Any, keep_logits: bool
) -> RoutedChunk:
    """Top-k experts [L,t,k] int16, weights [L,t,k] f32, logits [L,t,E] f32|None of one forward."""
    present = [r for r in router_logits if r is not None]
    logits = torch.stack([r.reshape(-1, spec.num_experts).float() for r in present])  # [L, t, E]
    probs = torch.softmax(logits, dim=-1)
    weights, experts = torch.topk(probs, spec.top_k, dim=-1)  # [L, t, k]
    if spec.renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    kept = logits.cpu().numpy() if keep_logits else None
    return experts.to(torch.int16).cpu().numpy(), weights.cpu().numpy(), kept


def _forward_kwargs(model: Any) -> dict[str, Any]:
    """Ask for last-position logits only when the model's forward supports it."""
    import inspect

    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):
        if name in params:
            return {name: 1}
    return {}


def _sequence_chunks(
    model: Any,
    torch: Any,
    ids: np.ndarray,
    generate_tokens: int,
    device: str,
    spec: RoutingSpec,
    keep_logits: bool,
) -> Iterator[RoutedChunk]:
    """Yield the routing of one prompt's prefill, then of each greedy decode step."""
    kwargs = {"output_router_logits": True, "use_cache": generate_tokens > 0}
    kwargs.update(_forward_kwargs(model))
    out = model(input_ids=torch.as_tensor(ids, device=device)[None], **kwargs)  # [1, t]
    yield _checked_route(out, spec, torch, keep_logits)
    for _ in range(generate_tokens):
        next_id = out.logits[:, -1].argmax(dim=-1, keepdim=True)  # [1, 1]
        out = model(input_ids=next_id, past_key_values=out.past_key_values, **kwargs)
        yield _checked_route(out, spec, torch, keep_logits)


def _checked_route(out: Any, spec: RoutingSpec, torch: Any, keep_logits: bool) -> RoutedChunk:
    """Route one forward's output, raising TraceError when it carries no router logits."""
    router_logits = getattr(out, "router_logits", None)
    if not router_logits or all(r is None for r in router_logits):
        raise TraceError(
            "the model returned no router logits; capture needs a transformers MoE model "
            "whose forward accepts output_router_logits=True"
        )
    return _route(router_logits, spec, torch, keep_logits)


class _TraceSink:
    """Memory-mapped `.npy` arrays of the whole trace, filled one forward at a time."""

    def __init__(
        self, folder: Path, shape: tuple[int, int, int], num_experts: int, logits_path: Path | None
    ) -> None:
        open_memmap = np.lib.format.open_memmap
        n_layers, n_tokens, _ = shape
        self.experts = open_memmap(folder / "experts.npy", "w+", np.int16, shape)
        self.weights = open_memmap(folder / "weights.npy", "w+", np.float32, shape)
        self.seq_id = open_memmap(folder / "seq_id.npy", "w+", np.int32, (n_tokens,))
        self.pos = open_memmap(folder / "pos.npy", "w+", np.int32, (n_tokens,))
        self.logits = None
        if logits_path is not None:
            logits_shape = (n_layers, n_tokens, num_experts)
            self.logits = open_memmap(logits_path, "w+", np.float32, logits_shape)

    def write(self, start: int, seq: int, pos0: int, chunk: RoutedChunk) -> int:
        """Store one forward's routing at token offset `start`; return the next offset."""
        experts, weights, logits = chunk
        stop = start + experts.shape[1]
        self.experts[:, start:stop] = experts
        self.weights[:, start:stop] = weights
        self.seq_id[start:stop] = seq
        self.pos[start:stop] = np.arange(pos0, pos0 + stop - start)
        if self.logits is not None:
            self.logits[:, start:stop] = logits
        return stop


def _run_plan(
    model: Any,
    torch: Any,
    plan: list[np.ndarray],
    generate_tokens: int,
    device: str,
    spec: RoutingSpec,
    progress: ProgressFn | None,
    make_sink: Callable[[int], _TraceSink],
    keep_logits: bool,
) -> _TraceSink:
    """Run every planned prompt (prefill + decode) and write its routing into a new sink."""
    sink: _TraceSink | None = None
    done = 0
    total = sum(ids.size + generate_tokens for ids in plan)
    with torch.inference_mode():
        for seq, ids in enumerate(plan):
            pos0 = 0
            for chunk in _sequence_chunks(
                model, torch, ids, generate_tokens, device, spec, keep_logits
            ):
                if sink is None:
                    sink = make_sink(chunk[0].shape[0])
                done = sink.write(done, seq, pos0, chunk)
                pos0 += chunk[0].shape[1]
                if progress is not None:
                    progress(done, total)
    assert sink is not None  # the plan holds at least one token
    return sink


def _metadata(
    model: Any, spec: RoutingSpec, layers: tuple[int, ...], info: dict[str, Any]
) -> dict[str, str]:
    """Provenance and phase metadata of a captured trace."""
    import torch
    import transformers

    skipped = sorted(set(range(spec.num_decoder_layers)) - set(layers))
    config = model.config
    return {
        "model": getattr(config, "_name_or_path", "") or config.model_type,
        "model_type": config.model_type,
        "source": "moesim trace capture",
        "tool": f"moesim {__version__}, transformers {transformers.__version__}, "
        f"torch {torch.__version__}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "routing": "softmax-topk-renorm" if spec.renormalise else "softmax-topk",
        "num_experts": str(spec.num_experts),
        "moe_layers": ",".join(map(str, layers)),
        "skipped_dense_layers": ",".join(map(str, skipped)),
        "dtype": str(getattr(model, "dtype", "")),
        "phase": "each sequence: prefill tokens, then its last decode_tokens_per_seq tokens "
        "are greedy decode steps (one forward each, KV cache)",
        **{key: str(value) for key, value in info.items()},
    }


def _layer_ids(spec: RoutingSpec, num_routers: int, notes: list[str]) -> tuple[int, ...]:
    """Decoder-layer index of each router the model reported."""
    if len(spec.moe_layers) == num_routers:
        return spec.moe_layers
    notes.append(
        f"model reported {num_routers} routers but the config implies MoE layers "
        f"{spec.moe_layers}; layers are numbered in router order"
    )
    return tuple(range(num_routers))


def check_budget(max_tokens: int, generate_tokens: int, max_prompt_tokens: int | None) -> None:
    """Refuse a token budget that leaves no room for a prompt, naming the flag."""
    if max_tokens < 1:
        raise TraceError(f"--max-tokens {max_tokens}: the trace needs at least 1 token")
    if generate_tokens < 0:
        raise TraceError(f"--generate {generate_tokens}: give 0 or more decode tokens")
    if max_prompt_tokens is not None and max_prompt_tokens < 1:
        raise TraceError(f"--max-prompt-tokens {max_prompt_tokens}: give 1 or more, each "
                         "prompt needs a token")
    if generate_tokens >= max_tokens:
        raise TraceError(f"no tokens to capture: --generate {generate_tokens} leaves no room "
                         f"for a prompt within --max-tokens {max_tokens}; raise --max-tokens "
                         "above --generate")


def capture_trace(
    model: Any,
    tokenizer: Any,
    texts: Iterable[Prompt],
    max_tokens: int,
    *,
    out_path: str | Path,
    generate_tokens: int = 0,
    device: str = "cpu",
    keep_logits: bool = False,
    progress: ProgressFn | None = None,
    dataset: str = "",
    max_prompt_tokens: int | None = None,
) -> CaptureReport:
    """Run `texts` (strings or token-id lists) through `model` and save their routing as a trace.

    `max_tokens` caps the trace's tokens (prefill + decode); prompts are taken in order and
    the one crossing the cap is truncated. Each sequence gets exactly `generate_tokens` greedy
    decode tokens (no stop at EOS). With `keep_logits` the raw router logits go to a sidecar
    `<out>.logits.npy` of shape [L, T, E].
    """
    torch, _ = _import_live("moesim trace capture")
    check_budget(max_tokens, generate_tokens, max_prompt_tokens)
    started = time.perf_counter()
    out_path = Path(out_path)
    if out_path.suffix != ".npz":  # numpy's savez would append it anyway
        out_path = out_path.with_name(out_path.name + ".npz")
    if not out_path.parent.is_dir():
        raise TraceError(f"output folder {out_path.parent} does not exist; create it first")
    spec = routing_spec(model.config)
    vocab_size = int(getattr(model.config, "vocab_size", 0) or np.iinfo(np.int64).max)
    plan = _plan_prompts(
        texts, tokenizer, vocab_size, max_tokens, generate_tokens, max_prompt_tokens
    )
    prefill = sum(ids.size for ids in plan)
    total = prefill + generate_tokens * len(plan)
    if total == 0:
        raise TraceError(
            f"no tokens to capture: empty prompts, or max_tokens={max_tokens} leaves no room "
            f"for a prompt plus generate_tokens={generate_tokens}"
        )
    logits_path = out_path.with_suffix(".logits.npy") if keep_logits else None
    model.eval()
    notes: list[str] = []
    with tempfile.TemporaryDirectory(dir=out_path.parent, prefix=".moesim-capture-") as tmp:
        sink = _run_plan(
            model,
            torch,
            plan,
            generate_tokens,
            device,
            spec,
            progress,
            lambda n_layers: _TraceSink(
                Path(tmp), (n_layers, total, spec.top_k), spec.num_experts, logits_path
            ),
            keep_logits,
        )
        capture_s = time.perf_counter() - started
        layers = _layer_ids(spec, sink.experts.shape[0], notes)
        info = {
            "dataset": dataset,
            "num_sequences": len(plan),
            "prefill_tokens": prefill,
            "decode_tokens": total - prefill,
            "decode_tokens_per_seq": generate_tokens,
        }
        if logits_path is not None:
            info["logits_file"] = logits_path.name
        trace = RouterTrace(
            experts=sink.experts,
            seq_id=sink.seq_id,
            pos=sink.pos,
            weights=sink.weights,
            metadata=_metadata(model, spec, layers, info),
        )
        save_trace(trace, out_path)
        if sink.logits is not None:
            sink.logits.flush()
        del trace, sink  # release the memory maps before their folder is removed
    skipped = tuple(sorted(set(range(spec.num_decoder_layers)) - set(layers)))
    if skipped:
        notes.append(f"skipped dense decoder layers {skipped} (no router)")
    return CaptureReport(
        out_path=out_path,
        num_sequences=len(plan),
        prefill_tokens=prefill,
        decode_tokens=total - prefill,
        num_moe_layers=len(layers),
        skipped_dense_layers=skipped,
        top_k=spec.top_k,
        num_experts=spec.num_experts,
        capture_s=capture_s,
        elapsed_s=time.perf_counter() - started,
        logits_path=logits_path,
        notes=tuple(notes),
    )


_DTYPES = ("bf16", "fp32", "fp16", "fp8")


def _check_device(torch: Any, device: str, dtype: str) -> None:
    """Raise TraceError when the device is absent or cannot run `dtype`."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TraceError(f"--device {device}: no CUDA GPU is visible to torch; use --device cpu")
    if device.startswith("cuda:"):
        count = torch.cuda.device_count()
        if int(device.split(":", 1)[1]) >= count:
            raise TraceError(f"--device {device}: torch sees {count} CUDA GPU(s), numbered "
                             f"0..{count - 1}; pick one of them")
    if device == "mps":
        backend = getattr(getattr(torch, "backends", None), "mps", None)
        if backend is None or not backend.is_available():
            raise TraceError("--device mps: torch has no usable Apple MPS device here; use "
                             "--device cpu")
    if dtype != "fp8":
        return
    if not device.startswith("cuda"):
        raise TraceError(
            f"--dtype fp8 is unsupported on {device}: it needs a CUDA GPU with compute "
            "capability >= 8.9 (Ada or Hopper, e.g. L40S, H100); use --dtype bf16"
        )
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if (major, minor) < (8, 9):
        raise TraceError(
            f"--dtype fp8 is unsupported on this GPU (compute capability {major}.{minor}); "
            "it needs >= 8.9 (Ada or Hopper); use --dtype bf16"
        )


def load_model(model_id: str, device: str = "cpu", dtype: str = "bf16") -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer from a local folder or a cached hub id."""
    torch, transformers = _import_live("loading a model")
    if dtype not in _DTYPES:
        raise TraceError(f"--dtype {dtype!r} is not one of {', '.join(_DTYPES)}")
    _check_device(torch, device, dtype)
    torch_dtype = {"fp32": torch.float32, "fp16": torch.float16}.get(dtype, torch.bfloat16)
    major = int(transformers.__version__.split(".")[0])
    kwargs: dict[str, Any] = {"dtype" if major >= 5 else "torch_dtype": torch_dtype}
    if dtype == "fp8":
        kwargs["quantization_config"] = transformers.FineGrainedFP8Config()
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_id, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(model_id)
    except (OSError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TraceError(
            f"cannot load model {model_id!r} ({reason}); pass a local folder with config.json, "
            "weights and tokenizer, or a hub id already in the local cache"
        ) from None
    return model.to(device).eval(), tokenizer
