"""Serving under load: requests arrive, a continuous-batching scheduler runs them iteration by
iteration, each iteration one evaluated step plan, and the serving metrics follow."""
