"""The scheduler of one serving engine (one attention group), after vLLM's default (V1) policy.

Iteration-level continuous batching. Each iteration has a budget of `max_num_batched_tokens`
tokens and runs at most `max_num_seqs` sequences:
1. running requests that decode (their one new token each) go first, oldest first;
2. then running requests part-way through their prompt continue it (chunked prefill: as many
   prompt tokens as the budget leaves);
3. then waiting requests are admitted first come, first served, each with the chunk of its
   prompt the budget leaves, while sequences and KV blocks last (a request that does not fit
   holds the queue: no later request overtakes it), unless this iteration preempted one.
A request's KV cache grows block by block (`KvCache`, block size 16 by default); when a
running request needs a block and none is free, the most recently admitted running request is
preempted by recompute: its blocks are freed and it goes back to the head of the queue, to
prefill its prompt and the output so far again when it is readmitted (its emitted tokens
stand). A request whose iteration computes up to its last known token produces one output
token when the iteration ends.

Multi-token prediction (`draft_tokens` N > 0): a decoding request also verifies N draft tokens
(1 + N tokens, capped by the outputs it still owes), its KV cache grown for all of them; when
the iteration ends `accept(N)` says how many drafts were accepted (leading ones), it produces
1 + that many tokens at once and the rejected drafts' K/V is dropped.

Knobs: `max_num_seqs`, `max_num_batched_tokens`, the cache size in blocks and `block_size`.
`prefill_only` (a disaggregated prefill engine) hands a request back after its first token
and keeps its KV blocks until the transfer to the decode engine is done (`sent`), as vLLM's
NIXL connector frees them only once the decode side has read them. A request that could never
fit the cache is refused when it is queued.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from moesim.errors import ConfigError
from moesim.serve.kv_cache import KvCache
from moesim.serve.requests import Request

__all__ = ["Batch", "Scheduler"]

Batch = list[tuple[Request, int]]  # (request, tokens it computes this iteration)


class Scheduler:
    """FCFS continuous batching with chunked prefill and a paged KV cache (module doc)."""

    def __init__(self, cache: KvCache, max_num_seqs: int, max_num_batched_tokens: int,
                 prefill_only: bool = False, draft_tokens: int = 0,
                 accept: Callable[[int], int] | None = None) -> None:
        self.cache = cache
        self.draft_tokens = draft_tokens if accept is not None else 0
        self.accept = accept
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.prefill_only = prefill_only
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.preemptions = 0
        # prefill_only: blocks of requests whose KV cache is still being sent, by request id
        self.sending: dict[int, int] = {}

    @property
    def load(self) -> int:
        """Requests it holds (running and waiting), for a least-loaded balancer."""
        return len(self.running) + len(self.waiting)

    @property
    def idle(self) -> bool:
        """Whether it has nothing to run."""
        return not self.running and not self.waiting

    def add(self, request: Request) -> None:
        """Queue a new (or transferred) request; one that could never fit the cache (its prompt,
        or with decoding its prompt and output but the last token) is a ConfigError."""
        tokens = request.prompt_tokens + (0 if self.prefill_only else request.output_tokens - 1)
        need = self.cache.blocks_for(tokens)
        if need > self.cache.num_blocks:
            size = self.cache.block_size
            raise ConfigError(
                f"a request of {request.prompt_tokens} prompt + {request.output_tokens} output "
                f"tokens needs {need} KV blocks of {size} tokens but an attention group's cache "
                f"holds {self.cache.num_blocks} ({self.cache.num_blocks * size} tokens); raise "
                "--kv-cache-tokens (or use more GPUs / fp8) or shorten the requests")
        self.waiting.append(request)

    def sent(self, request: Request) -> None:
        """A prefill-only scheduler's request has finished sending its KV cache: its blocks
        are free again."""
        self.cache.used -= self.sending.pop(request.id)

    def schedule(self) -> Batch:
        """The requests and token counts of the next iteration (module doc)."""
        budget = self.max_num_batched_tokens
        batch: Batch = []
        scheduled: set[int] = set()
        preemptions = self.preemptions
        for decoding in (True, False):
            for request in list(self.running):
                if budget == 0 or request.decoding != decoding or request.id in scheduled:
                    continue
                if request not in self.running:  # preempted while making room
                    continue
                tokens = min(request.known - request.computed + self._drafts(request), budget)
                if self._make_room(request, tokens, batch, scheduled):
                    batch.append((request, tokens))
                    scheduled.add(request.id)
                    budget -= tokens
        while (self.waiting and budget > 0 and len(self.running) < self.max_num_seqs
               and self.preemptions == preemptions):  # none admitted after a preemption
            request = self.waiting[0]
            tokens = min(request.known - request.computed, budget)
            if not self.cache.grow(request, request.computed + tokens):
                break
            self.waiting.popleft()
            self.running.append(request)
            batch.append((request, tokens))
            scheduled.add(request.id)
            budget -= tokens
        return batch

    def _drafts(self, request: Request) -> int:
        """Draft tokens a decoding request verifies: N, capped by the outputs it still owes."""
        if not self.draft_tokens or not request.decoding:
            return 0
        return max(min(self.draft_tokens, request.output_tokens - request.emitted - 1), 0)

    def _make_room(self, request: Request, tokens: int, batch: Batch, scheduled: set[int]
                   ) -> bool:
        """Blocks for `request` to hold its tokens after this iteration, preempting the most
        recently admitted running requests while they are short; False if `request` itself
        had to go."""
        while not self.cache.grow(request, request.computed + tokens):
            victim = self.running[-1]
            self._preempt(victim)
            if victim.id in scheduled:
                batch[:] = [(r, n) for r, n in batch if r is not victim]
                scheduled.discard(victim.id)
            if victim is request:
                return False
        return True

    def _preempt(self, request: Request) -> None:
        """Recompute later: free its blocks, forget its K/V, back to the head of the queue."""
        self.running.remove(request)
        self.cache.release(request)
        request.computed = 0
        request.preemptions += 1
        self.preemptions += 1
        self.waiting.appendleft(request)

    def complete(self, batch: Batch, now_s: float) -> list[Request]:
        """The iteration ended at `now_s`: advance every request of it; return those that left
        (finished, or with `prefill_only` produced their first token)."""
        leaving = []
        for request, tokens in batch:
            drafts = tokens - 1 if request.decoding and self.accept is not None else 0
            accepted = self.accept(drafts) if drafts and self.accept is not None else 0
            request.computed += tokens - drafts + accepted
            if request.computed == request.known + accepted:
                for _ in range(1 + accepted):
                    request.emit(now_s)
                if request.done or (self.prefill_only and request.emitted == 1):
                    self.running.remove(request)
                    if request.done:
                        self.cache.release(request)
                    else:  # its blocks stay until the decode side has read them (`sent`)
                        self.sending[request.id] = request.blocks
                        request.blocks = 0
                    leaving.append(request)
        return leaving
