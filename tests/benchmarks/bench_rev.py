"""Validation benchmark of the REV stop decision (processing.rev.RevTracker).

For stationary synthetic microstructures of several particle sizes, compares the
depth at which the tracker stops with the *oracle depth*: the smallest depth
after which every tracked metric stays within tolerance of its value on the
full (much deeper) volume. A stop before the oracle depth is premature. Graded
volumes (active fraction drifting along z) must never stop. Finally compares
the porosity REV curve with ``porespy.metrics.rev_porosity`` on one volume.

Run::

    PYTHONPATH=. python tests/benchmarks/bench_rev.py            # 12 seeds, 400 x 96 x 96
    PYTHONPATH=. python tests/benchmarks/bench_rev.py --seeds 4  # quicker
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from processing.rev import RevTracker, default_metrics, subvolume_curve
from processing.synthetic import generate_microstructure

SPACING = (0.05, 0.04, 0.04)  # anisotropic: slices thicker than pixels
RADII_UM = (0.06, 0.09, 0.12, 0.15)


def prefix_fractions(labels, phase_labels=(1, 2, 3)):
    """(Z, P) volume fraction of each phase on labels[:d] for d = 1..Z."""
    per_slice = np.stack([(labels == k).sum(axis=(1, 2)) for k in phase_labels], axis=1)
    return np.cumsum(per_slice, axis=0) / (np.arange(1, labels.shape[0] + 1)[:, None] * labels[0].size)


def oracle_depth(prefix, tolerance):
    """Smallest depth from which every column stays within tolerance of its last value."""
    final = prefix[-1]
    outside = np.any(np.abs(prefix - final) > tolerance * np.abs(final), axis=1)
    idx = np.nonzero(outside)[0]
    return int(idx[-1] + 2) if idx.size else 1


def stop_depth(labels, *, confidence, rng):
    """Depth (slices) at which the tracker latches its stop, fed slice by slice; None if never."""
    tracker = RevTracker(spacing_um=SPACING, confidence=confidence, rng=rng)
    for depth in range(1, labels.shape[0] + 1):
        tracker.update(labels[:depth])
        if tracker.stop is not None:
            return depth
    return None


def stationary_table(seeds, shape, confidences, radii, tolerance=0.05):
    print(f"\nStationary volumes {shape} spacing {SPACING} um, tolerance {tolerance:.0%}, phase fractions tracked")
    head = f"{'seed':>4} {'r_um':>5} {'oracle':>6} " + " ".join(f"{'stop@' + format(c, '.2f'):>10}" for c in confidences)
    print(head)
    ratios = {c: [] for c in confidences}
    premature = {c: 0 for c in confidences}
    never = {c: 0 for c in confidences}
    for seed in seeds:
        radius = radii[seed % len(radii)]
        labels = generate_microstructure(shape, spacing_um=SPACING, particle_radius_um=radius, rng=seed)
        oracle = oracle_depth(prefix_fractions(labels), tolerance)
        cells = []
        for c in confidences:
            stop = stop_depth(labels, confidence=c, rng=seed)
            if stop is None:
                never[c] += 1
                cells.append(f"{'never':>10}")
                continue
            if stop < oracle:
                premature[c] += 1
            ratios[c].append(stop / oracle)
            cells.append(f"{stop:>5} {stop / oracle:4.1f}{'!' if stop < oracle else ' '}")
        print(f"{seed:>4} {radius:>5.2f} {oracle:>6} " + " ".join(cells))
    for c in confidences:
        med = np.median(ratios[c]) if ratios[c] else float("nan")
        print(f"confidence {c:.2f}: premature stops {premature[c]}/{len(seeds)}, never stopped {never[c]}, "
              f"median stop/oracle {med:.2f} (target <= 1.3), max {max(ratios[c], default=float('nan')):.2f}")


def graded_table(seeds, shape, gradients, confidence, radii):
    print(f"\nGraded volumes {shape}: active fraction changes by `gradient` (relative) over the depth")
    print(f"{'seed':>4} {'gradient':>8} {'stop':>6}  first reason at the end")
    stops = 0
    for seed in seeds:
        for gradient in gradients:
            radius = radii[seed % len(radii)]
            labels = generate_microstructure(shape, spacing_um=SPACING, particle_radius_um=radius,
                                             gradient=gradient, rng=seed)
            tracker = RevTracker(spacing_um=SPACING, confidence=confidence, rng=seed)
            stop = None
            for depth in range(1, shape[0] + 1):
                doc = tracker.update(labels[:depth])
                if tracker.stop is not None and stop is None:
                    stop = depth
            stops += stop is not None
            reason = doc["reasons"][0] if doc["reasons"] else "-"
            print(f"{seed:>4} {gradient:>8.2f} {str(stop):>6}  {reason[:90]}")
    print(f"graded volumes stopped: {stops} (must be 0)")


def porespy_comparison(shape, seed=0):
    """Same cubes through porespy (exact agreement expected) and random porespy cubes (curve agreement)."""
    import porespy

    spacing = (0.04, 0.04, 0.04)  # porespy's cubes are in voxels: compare on isotropic voxels
    labels = generate_microstructure(shape, spacing_um=spacing, particle_radius_um=0.12, rng=seed)
    pore = labels == 1
    edges_px = np.array([12, 16, 24, 32, 48, 64])
    edges_px = edges_px[edges_px <= min(shape) // 2]
    t0 = time.perf_counter()
    curve = subvolume_curve(labels, default_metrics()[0], spacing_um=spacing, edges_um=edges_px * spacing[0],
                            n_samples=24, rng=seed)
    t_rw = time.perf_counter() - t0
    n_rw = int(curve.n_samples.sum())
    slices = [tuple(slice(c, c + n) for c, n in zip(corner, size))
              for size, corners in zip(curve.voxels, curve.corners) for corner in corners]
    t0 = time.perf_counter()
    same = porespy.metrics.rev_porosity(pore, slices=slices)
    t_same = time.perf_counter() - t0
    groups = np.split(same.porosity, np.cumsum(curve.n_samples)[:-1])
    rel_same = np.array([g.std(ddof=1) / g.mean() if g.size >= 2 else np.nan for g in groups])
    np.random.seed(seed)  # porespy draws its random cubes from the global NumPy generator
    ref = porespy.metrics.rev_porosity(pore, n=1000)
    side = np.round(ref.volume ** (1 / 3)).astype(int)
    print(f"\nPorosity REV curve vs porespy.metrics.rev_porosity on {shape} (r = 0.12 um, isotropic 0.04 um)")
    print(f"same {len(slices)} cubes through porespy: max |relative std difference| over edges = "
          f"{np.nanmax(np.abs(rel_same - curve.relative_std)):.2e}")
    print(f"{'edge_px':>7} {'revwatch':>9} {'n':>3} {'porespy(random)':>15} {'n':>4} {'ratio':>6}")
    for k, e in enumerate(edges_px):
        sel = np.abs(side - e) <= max(1, e // 8)
        ps = ref.porosity[sel]
        rel_ps = ps.std(ddof=1) / ps.mean() if sel.sum() >= 5 else float("nan")
        print(f"{e:>7} {curve.relative_std[k]:>9.4f} {curve.n_samples[k]:>3} {rel_ps:>15.4f} {sel.sum():>4} "
              f"{curve.relative_std[k] / rel_ps:>6.2f}")
    print(f"time on the same {n_rw} cubes: porespy {t_same:.3f} s, revwatch {t_rw:.3f} s "
          f"(speed ratio {t_same / t_rw:.1f}x); revwatch REV edge (5 %) = {curve.rev_edge_um} um")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=12)
    parser.add_argument("--depth", type=int, default=400)
    parser.add_argument("--xy", type=int, default=96)
    parser.add_argument("--confidence", type=float, nargs="+", default=[0.95, 0.8])
    parser.add_argument("--radii", type=float, nargs="+", default=list(RADII_UM), help="particle radii (um)")
    parser.add_argument("--no-porespy", action="store_true")
    args = parser.parse_args()
    shape = (args.depth, args.xy, args.xy)
    seeds = list(range(args.seeds))
    t0 = time.perf_counter()
    stationary_table(seeds, shape, args.confidence, args.radii)
    graded_table(seeds, shape, (0.3, 0.6), args.confidence[0], args.radii)
    if not args.no_porespy:
        porespy_comparison((128, 128, 128))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
