"""Discrete-event engine: flow-level network with max-min fair sharing, compute streams, step timeline."""
