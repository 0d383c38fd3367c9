"""moesim: simulate Mixture-of-Experts serving on multi-GPU clusters from real router traces."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
