"""Paged KV cache of one scheduler: fixed-size blocks of `block_size` tokens, as vLLM pages it.

A request holds `ceil(tokens / block_size)` blocks for the tokens whose K/V it keeps; it grows
block by block as it computes tokens and gives every block back when it finishes or is
preempted. The cache never hands out more blocks than it has (`grow` refuses instead).
"""

from __future__ import annotations

from moesim.serve.requests import Request

__all__ = ["KvCache"]


class KvCache:
    """`num_blocks` blocks of `block_size` tokens."""

    def __init__(self, num_blocks: int, block_size: int) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.used = 0
        self.peak = 0

    @property
    def free(self) -> int:
        """Blocks not held by any request."""
        return self.num_blocks - self.used

    def blocks_for(self, tokens: int) -> int:
        """Blocks that hold `tokens` tokens."""
        return -(-tokens // self.block_size)

    def grow(self, request: Request, tokens: int) -> bool:
        """Give `request` the blocks to hold `tokens` tokens; False (nothing taken) if too few
        are free."""
        need = self.blocks_for(tokens) - request.blocks
        if need > self.free:
            return False
        if need > 0:
            request.blocks += need
            self.used += need
            self.peak = max(self.peak, self.used)
        return True

    def release(self, request: Request) -> None:
        """Take back every block of `request`."""
        self.used -= request.blocks
        request.blocks = 0
