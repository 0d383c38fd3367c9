"""Live validation: run the exact traffic moesim predicts on real processes and check it.

`validate.measurement` (no torch) defines the measurement JSON and the byte check;
`validate.launch` spawns the ranks and gathers their results; `validate.harness` is the rank
worker. torch is imported only by the last two.
"""

from __future__ import annotations

__all__: list[str] = []
