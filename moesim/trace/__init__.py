"""Router traces: format and I/O, import from logs, statistics, capture, synthesis."""
