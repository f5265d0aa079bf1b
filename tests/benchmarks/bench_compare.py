"""Calibration of the uncertainties of ``revwatch compare`` (processing.compare.sample_table).

Samples of one material differ only by sampling: the standard deviation of a metric across them
is the truth the standard uncertainty ``u`` should estimate. The generator sets the phase
fractions of a volume exactly (quantile thresholds), which also narrows the spread across seeds
of every metric that follows the fractions (spread / u was 0.37 that way); the calibration
samples are therefore the octants of larger generated volumes, whose fractions vary freely (the
octants of one volume share its fixed total: their spread is low by about sqrt(7/8)).
Prints, per metric, that spread, the root-mean-square ``u`` and their ratio (1 = calibrated,
< 1 = conservative); then, across whole volumes of different seeds and identical parameters, the
share of pairs marked different at ``k = 2`` (false marks) and, against volumes with the active
fraction raised by 0.10 or the particle radius cut by a third, the share marked (power) on the
metrics those changes move.

Run::

    PYTHONPATH=. python tests/benchmarks/bench_compare.py              # 6 seeds, 2x8 octants, 64^3 voxels
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


def volume(active, radius, seed, size):
    return generate_microstructure((size,) * 3, spacing_um=SPACING_UM, particle_radius_um=radius, rng=seed,
                                   fractions={"pore": 0.2, "electrolyte": 0.8 - active, "active": active})


def table(active, radius, seed, size):
    return sample_table(volume(active, radius, seed, size), spacing_um=SPACING_UM, min_edge_um=MIN_EDGE_UM, rng=seed)


def octant_tables(active, radius, seed, size):
    """Tables of the 8 octants (size^3 each) of one (2 size)^3 volume."""
    big = volume(active, radius, seed, 2 * size)
    return [sample_table(np.ascontiguousarray(big[z:z + size, y:y + size, x:x + size]), spacing_um=SPACING_UM,
                         min_edge_um=MIN_EDGE_UM, rng=seed)
            for z in (0, size) for y in (0, size) for x in (0, size)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--radius-um", type=float, default=0.15)
    parser.add_argument("--k", type=float, default=2.0)
    parser.add_argument("--volumes", type=int, default=2, help="(2 size)^3 volumes cut into octants (calibration)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    octants = [t for seed in range(args.volumes) for t in octant_tables(0.45, args.radius_um, 1000 + seed, args.size)]
    same = [table(0.45, args.radius_um, seed, args.size) for seed in range(args.seeds)]
    denser = [table(0.55, args.radius_um, 100 + seed, args.size) for seed in range(args.seeds)]
    finer = [table(0.45, args.radius_um * 2 / 3, 200 + seed, args.size) for seed in range(args.seeds)]
    seconds = time.perf_counter() - t0
    n = len(octants) + 3 * args.seeds
    print(f"{n} samples of {args.size}^3 voxels ({len(octants)} octants of {args.volumes} volumes, {3 * args.seeds} "
          f"volumes), particle radius {args.radius_um} um, cubes from {MIN_EDGE_UM} um: {seconds / n:.1f} s per sample "
          f"(load {os.getloadavg()[0]:.1f}, {os.cpu_count()} cores)\n")
    print(f"{'metric':46s} {'sd octants':>11s} {'rms u':>10s} {'ratio':>6s} {'seeds: false marks':>19s}")
    ratios, false, pairs = [], 0, 0
    for name in same[0].uncertainty:
        values = np.array([t.uncertainty[name].value for t in octants], dtype=float)
        us = np.array([np.nan if t.uncertainty[name].uncertainty is None else t.uncertainty[name].uncertainty
                       for t in octants])
        marks = [difference(a.uncertainty[name], b.uncertainty[name], k=args.k).significant
                 for a, b in itertools.combinations(same, 2)]
        n_marked, n_decided = sum(m is True for m in marks), sum(m is not None for m in marks)
        false, pairs = false + n_marked, pairs + n_decided
        spread, rms = np.nanstd(values, ddof=1), np.sqrt(np.nanmean(us ** 2))
        ratio = spread / rms if rms > 0 else np.nan
        if np.isfinite(ratio) and spread > 0:
            ratios.append(ratio)
        print(f"{name:46s} {spread:11.4g} {rms:10.4g} {ratio:6.2f} {n_marked:9d} / {n_decided:<5d}")
    print(f"\nratio sd/u over the octants (metrics that vary): median {np.median(ratios):.2f}, "
          f"range {np.min(ratios):.2f}-{np.max(ratios):.2f}")
    print(f"false marks (whole volumes, same parameters, different seeds, k = {args.k:g}): {false} of {pairs} "
          f"metric comparisons ({100 * false / max(pairs, 1):.1f} %)")
    for label, others, metrics in (
            ("active 0.45 -> 0.55", denser, ("volume_fraction.active", "volume_fraction.electrolyte")),
            ("radius x 2/3", finer, ("local_thickness_um.active.mean", "surface_area_per_phase_volume_um-1.active"))):
        for name in metrics:
            marks = [difference(a.uncertainty[name], b.uncertainty[name], k=args.k).significant
                     for a, b in zip(same, others)]
            print(f"power, {label}, {name}: marked in {sum(m is True for m in marks)} of {len(marks)} pairs")


if __name__ == "__main__":
    main()
