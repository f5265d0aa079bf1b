"""True z (processing.zaxis): change-of-step reports and volume depth over randomised z series (issue 11).

Run: ``PYTHONPATH=. python tests/benchmarks/bench_zaxis.py [--seeds 50]``

Each case is a 300-slice series of 50 nm nominal steps whose measured z scatters around the true
position (Atlas writes the measured z in the file names), over many seeds:

- ``none``: nothing happens (any report is false);
- ``lost``: one slice lost while the index goes on (a step of 100 nm at slice 151);
- ``missing``: every other index missing after slice 100 (the watcher reports the gaps; the step
  per index does not change, so no z report is right);
- ``slower``: the step becomes 80 nm from slice 151.

Printed per case and scatter: share of runs with exactly the right report (none, or one within 10
slices of where it happened), false reports per run, and the depth error of the volume
(``n x dz`` with ``dz`` the mean measured step, against the true span; n x dz exceeds the span by one
step, 1 / (n - 1) of it, by construction) median and worst.
"""

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).absolute().parents[2]))

from processing.zaxis import ZPositions, mean_step_um  # noqa: E402

STEP_UM = 0.05
N = 300


def series(case):
    index = np.arange(1, N + 1)
    z = STEP_UM * index
    if case == "lost":
        z = z + STEP_UM * (index > 150)
    elif case == "slower":
        z = z + 0.03 * np.maximum(index - 150, 0)
    elif case == "missing":
        keep = (index <= 100) | (index % 2 == 0)
        index, z = index[keep], z[keep]
    return index, z


def run_case(case, scatter_um, seed):
    index, z_true = series(case)
    rng = np.random.default_rng(seed)
    measured = z_true + np.clip(rng.normal(0, scatter_um, z_true.size), -0.49 * STEP_UM, 0.49 * STEP_UM)
    positions = ZPositions()
    reports = [i for i, v in zip(index, measured) if positions.place(int(i), float(v)).change]
    expected = 151 if case in ("lost", "slower") else None
    right = (not reports) if expected is None else (len(reports) == 1 and expected <= reports[0] <= expected + 10)
    false = len(reports) - (1 if right and expected is not None else 0)
    dz = mean_step_um(measured[0], measured[-1], measured.size)
    span = z_true[-1] - z_true[0]
    depth_error = measured.size * dz / span - 1  # n x dz against the true span (issue 11: within 1 %)
    return right, false, depth_error


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=50)
    args = parser.parse_args()
    print(f"{N} slices, {STEP_UM * 1e3:g} nm nominal step, {args.seeds} seeds per row; load {os.getloadavg()[0]:.1f}")
    print(f"{'case':8} {'z scatter':>10} {'right':>7} {'false/run':>10} {'depth err median':>17} {'worst':>8}")
    for case in ("none", "lost", "missing", "slower"):
        for scatter_nm in (0.0, 2.5, 10.0):
            results = [run_case(case, scatter_nm / 1e3, seed) for seed in range(args.seeds)]
            right = np.mean([r[0] for r in results])
            false = np.mean([r[1] for r in results])
            errors = np.abs([r[2] for r in results])
            print(f"{case:8} {scatter_nm:>7.1f} nm {right:>7.1%} {false:>10.3f} {np.median(errors):>17.3%} "
                  f"{errors.max():>8.3%}")


if __name__ == "__main__":
    main()
