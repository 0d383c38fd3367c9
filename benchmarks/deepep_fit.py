"""DeepEP's published rows against moesim's DeepEP costs (moesim.calibrate.deepep).

Prints, per README row: moesim's link time (bytes at the links' rate), its time with the fixed
latency and wire factor of moesim.engine.a2a, the logical GB/s by the README's definition, the
published GB/s and the error; then the latencies and wire factor the rows imply (the fit the
constants in moesim/engine/a2a.py were set from).

    python benchmarks/deepep_fit.py
"""

from __future__ import annotations

import numpy as np

from moesim.calibrate.deepep import LOW_LATENCY_ROWS, NORMAL_ROWS, reproduce
from moesim.engine.a2a import DEEPEP


def main() -> None:
    print(f"{'impl':14} {'kind':9} {'EP':>4} {'link us':>9} {'time us':>9} {'pub us':>8} "
          f"{'GB/s':>7} {'pub GB/s':>9} {'error':>7}")
    implied: dict[tuple[str, str, bool], list[float]] = {}
    wire: list[float] = []
    for row in (*LOW_LATENCY_ROWS, *NORMAL_ROWS):
        got = reproduce(row)
        published_s = row.latency_s
        if published_s is None:  # normal rows: time from the logical bytes
            published_s = got.time_s * got.gb_per_s / row.gb_per_s
        print(f"{row.impl:14} {row.kind:9} {row.ep:>4} {got.link_time_s * 1e6:>9.1f} "
              f"{got.time_s * 1e6:>9.1f} {published_s * 1e6:>8.1f} {got.gb_per_s:>7.1f} "
              f"{row.gb_per_s:>9.1f} {got.error:>+7.1%}")
        if row.impl == "deepep-ll":
            key = (row.impl, row.kind, row.ep > 8)
            implied.setdefault(key, []).append(published_s - got.link_time_s)
        else:
            bare_link_s = got.link_time_s / DEEPEP["deepep-normal"].wire_factor
            wire.append((published_s - DEEPEP["deepep-normal"].dispatch_intra_s) / bare_link_s)
    print("\nlow-latency fixed latency implied by the rows (mean over rows):")
    for (_impl, kind, inter), values in sorted(implied.items()):
        where = "across nodes" if inter else "within a node"
        print(f"  {kind:9} {where:14} {np.mean(values) * 1e6:6.1f} us "
              f"(rows: {', '.join(f'{v * 1e6:.0f}' for v in values)})")
    print(f"normal kernels: share of the links' rate {1 / np.mean(wire):.3f} "
          f"(wire factor {np.mean(wire):.3f}; rows: {', '.join(f'{1 / w:.2f}' for w in wire)})")


if __name__ == "__main__":
    main()
