"""Predicted / measured of the shipped kernel profiles against every published table they use.

    python benchmarks/kernel_accuracy.py [--profile vllm]

Per profile, GPU and table: the median ratio per token band (GEMM rows: M; MoE rows: tokens;
attention rows: batch x context is not a token band, so one median per table), and the count.
A table marked `fitted` fed that profile's curves; `derived` ones are out of sample.
"""

from __future__ import annotations

import argparse

from moesim.calibrate.kernels import accuracy_table
from moesim.inputs.kernel_profile import list_kernel_profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="append", help="profile(s); default all shipped")
    args = parser.parse_args()
    print(f"{'profile':8} {'gpu':9} {'table':28} {'op':18} {'band':9} {'rows':>4} "
          f"{'median pred/meas':>17}")
    for name in args.profile or list_kernel_profiles():
        for row in accuracy_table(name):
            print(f"{row['profile']:8} {row['gpu']:9} {row['table']:28} {row['op']:18} "
                  f"{row['band']:9} {row['rows']:4d} {row['median_ratio']:17.3f}")


if __name__ == "__main__":
    main()
