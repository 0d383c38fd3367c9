"""Output: the typed run result, tables, plots and the HTML report (never runs the engine)."""
