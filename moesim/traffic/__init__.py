"""Traffic: layouts and expert placement, the tokens of a step, exact bytes, the memory fit."""
