"""Discrete-event engine: max-min fair flow network, compute streams, step timeline."""
