"""Calibration of the uncertainties of ``revwatch compare`` (processing.compare.sample_table).

Samples generated with identical parameters and different seeds differ only by sampling: the
standard deviation of a metric across seeds is the truth the standard uncertainty ``u`` should
estimate. Prints, per metric, that spread, the root-mean-square ``u`` and their ratio (1 =
calibrated, < 1 = conservative), then the share of same-parameter pairs marked different at
``k = 2`` (false marks) and, against samples with the active fraction raised by 0.10 or the
particle radius cut by a third, the share marked (power) on the metrics those changes move.

Note: the generator sets the volume fractions exactly (quantile thresholds), so they do not vary
across seeds; their ratio is 0 by construction, which says nothing about real materials.

Run::

    PYTHONPATH=. python tests/benchmarks/bench_compare.py              # 6 seeds, 64^3 voxels
    PYTHONPATH=. python tests/benchmarks/bench_compare.py --seeds 10 --size 80
"""

from __future__ import annotations

import argparse
import itertools
import os
import time

import numpy as np

from processing.compare import difference, sample_table
from processing.synthetic import generate_microstructure

SPACING_UM = (0.05, 0.05, 0.05)
MIN_EDGE_UM = 0.5


def table(active, radius, seed, size):
    labels = generate_microstructure((size,) * 3, spacing_um=SPACING_UM, particle_radius_um=radius, rng=seed,
                                     fractions={"pore": 0.2, "electrolyte": 0.8 - active, "active": active})
    return sample_table(labels, spacing_um=SPACING_UM, min_edge_um=MIN_EDGE_UM, rng=seed)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--radius-um", type=float, default=0.15)
    parser.add_argument("--k", type=float, default=2.0)
    args = parser.parse_args()
    t0 = time.perf_counter()
    same = [table(0.45, args.radius_um, seed, args.size) for seed in range(args.seeds)]
    denser = [table(0.55, args.radius_um, 100 + seed, args.size) for seed in range(args.seeds)]
    finer = [table(0.45, args.radius_um * 2 / 3, 200 + seed, args.size) for seed in range(args.seeds)]
    seconds = time.perf_counter() - t0
    print(f"{3 * args.seeds} samples of {args.size}^3 voxels, particle radius {args.radius_um} um, cubes from "
          f"{MIN_EDGE_UM} um: {seconds / (3 * args.seeds):.1f} s per sample (load {os.getloadavg()[0]:.1f}, "
          f"{os.cpu_count()} cores)\n")
    print(f"{'metric':46s} {'sd across seeds':>16s} {'rms u':>10s} {'ratio':>6s} {'false marks':>12s}")
    ratios, false, pairs = [], 0, 0
    for name in same[0].uncertainty:
        values = np.array([t.uncertainty[name].value for t in same], dtype=float)
        us = np.array([np.nan if t.uncertainty[name].uncertainty is None else t.uncertainty[name].uncertainty
                       for t in same])
        marks = [difference(a.uncertainty[name], b.uncertainty[name], k=args.k).significant
                 for a, b in itertools.combinations(same, 2)]
        n_marked, n_decided = sum(m is True for m in marks), sum(m is not None for m in marks)
        false, pairs = false + n_marked, pairs + n_decided
        spread, rms = np.nanstd(values, ddof=1), np.sqrt(np.nanmean(us ** 2))
        ratio = spread / rms if rms > 0 else np.nan
        if not name.startswith(("volume_fraction", "active_electrolyte")) and np.isfinite(ratio):
            ratios.append(ratio)
        print(f"{name:46s} {spread:16.4g} {rms:10.4g} {ratio:6.2f} {n_marked:5d} / {n_decided:<5d}")
    print(f"\nratio sd/u over the metrics that vary with the seed: median {np.median(ratios):.2f}, "
          f"worst (largest) {np.max(ratios):.2f}")
    print(f"false marks (same parameters, k = {args.k:g}): {false} of {pairs} metric comparisons "
          f"({100 * false / max(pairs, 1):.1f} %)")
    for label, others, metrics in (
            ("active 0.45 -> 0.55", denser, ("volume_fraction.active", "volume_fraction.electrolyte")),
            ("radius x 2/3", finer, ("local_thickness_um.active.mean", "surface_area_per_phase_volume_um-1.active"))):
        for name in metrics:
            marks = [difference(a.uncertainty[name], b.uncertainty[name], k=args.k).significant
                     for a, b in zip(same, others)]
            print(f"power, {label}, {name}: marked in {sum(m is True for m in marks)} of {len(marks)} pairs")


if __name__ == "__main__":
    main()
