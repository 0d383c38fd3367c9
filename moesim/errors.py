"""Errors a user can cause, each carrying one clear message that names the field and the fix.

The CLI catches `MoesimError`, prints its message and exits non-zero; anything else is a bug.
"""

from __future__ import annotations

__all__ = [
    "MoesimError",
    "ConfigError",
    "TraceError",
    "PlacementError",
    "TopologyError",
    "ModelError",
]


class MoesimError(Exception):
    """Base class of every error caused by user input."""


class ConfigError(MoesimError):
    """A scenario or other input file is malformed (bad YAML, unknown field, wrong type)."""


class TraceError(MoesimError):
    """A router trace is malformed or does not match the model."""


class PlacementError(MoesimError):
    """A parallel layout is invalid for the world size or the model."""


class TopologyError(MoesimError):
    """A topology file is malformed, inconsistent or disconnected."""


class ModelError(MoesimError):
    """A model preset or Hugging Face config cannot be used."""
