"""Validation benchmark of the REV stop (processing.rev.RevTracker): a printed table.

Families of label volumes from ``processing.synthetic.generate_microstructure``, each
generated to exactly its planned depth H and fed to the tracker (the default tracked set,
``processing.rev.default_tracked``) every 4 slices, as the agent does:

- stationary: three particle radii x two field widths;
- graded: the active fraction changes linearly with depth (``gradient``), so that the value
  at H differs from the value at H/2 by at least twice the tolerance.

Then: the cost of an update at depth 100 and 1000 of 1024 x 1024 slices, porespy's
``rev_porosity`` on the same cubes, and (``--end-to-end``) three seeds rendered as slices
and run through ``revwatch run --exit-when-representative`` against the tracker alone.

Run (2 shared cores: the full run takes tens of minutes; parallelism none)::

    PYTHONPATH=. python tests/benchmarks/bench_rev.py                  # everything but end to end
    PYTHONPATH=. python tests/benchmarks/bench_rev.py --seeds 4 --graded-seeds 2 --no-cost   # quick look
    PYTHONPATH=. python tests/benchmarks/bench_rev.py --only end-to-end
    PYTHONPATH=. python tests/benchmarks/bench_rev.py --only burst      # 1200 slices through revwatch run
    PYTHONPATH=. python tests/benchmarks/bench_rev.py --only burst --burst 1000 1024 --burst-period 64   # memory at 1024^2
    PYTHONPATH=. python tests/benchmarks/bench_rev.py --only signals    # SIGINT / SIGTERM to exit at depth 100, 1000

Results on the final code of round 4 (2026-11-30, after the feature size was fixed on the first 8 slices;
two processes, ``--only families --family ...``, 30 seeds per stationary family, 10 per graded one; load 3-9)::

    family                  H d_ref med stop stop/ref never premat flagged stop/orc  saved
    r4px w256             320   180      202     1.12     0      0       1     8.33    37%
    r4px w1024            320   136      168     1.24     0      0       1     8.10    48%
    r8px w256             320   244      268     1.10     0      0       0     2.38    16%
    r8px w1024            320   216      240     1.11     1      0       1     4.75    25%
    r16px w256            640   564      588     1.04     4      0       0     1.42     8%
    r16px w1024           640   476      536     1.13     0      0       3     2.18    16%
    graded r8px w256 +    320     -        -        -    10      0      10        -     0%
    graded r4px w256 -    320     -        -        -    10      0      10        -     0%

    premature stops: stationary 0/180 (target <= 2 %), graded 0/20 (target 0; no graded seed stops)
    median stop / d_ref: worst 1.24 (r4px w1024) (target <= 1.3)
    ever 'not stationary': 6/180 = 3.3 % (target <= 5 %)
    prediction, median |error| at 25 / 50 / 75 % of the way to the stop: 10 / 11 / 20 % (first three
    families and the graded ones), 6 / 8 / 11 % (last three) (target <= 25 %); the stated range held the
    actual remainder in 88-98 %

``--only cost`` (same day): MB read per update 6.0 at depth 100, 6.3 at 1000 (ratio 1.06), peak traced
memory of an update 179.5 MB at both (ratio 1.00).

Round 3 (before the feature size was fixed; 1953 s at load 7-10): the same d_ref, median stops within
4 slices, 7/180 ever 'not stationary', 0 premature.

Prediction of the slices still needed (``--seeds 15 --graded-seeds 5``: the same decisions seed for
seed, 86 stationary seeds that stopped), median |error| (median signed): at 25 % of the way to the
stop 10 % (-6 %), at 50 % 8 % (-0 %), at 75 % 12 % (+0 %) (target <= 25 %). The earlier predictor
(only the floor before the floor, z kept at today's degrees of freedom) had 35 / 8 / 13 % on the
30-seed run. The stated range (``slices_needed_range``) held the actual remainder in 91 / 100 / 91 %
of 23 seeds (``--seeds 4 --graded-seeds 1``, after the overall range stopped waiting for every
metric's variance; there the point errors were 9 / 6 / 12 %).

``--only burst`` (1200 slices of 128 x 128 px, fine particles, copied into the watched folder in 2.9 s;
``revwatch run`` stored them at 5.7 slices/s, 300 rev documents): the verdict was 3 slices behind the
stored volume when the last slice was stored (worst 9, median 3; one update is 4 slices) and about the
last slice 1.5 s after it was stored; the agent's resident memory 386 MB at depth 101, 489 MB at depth
1200 (ratio 1.27); SIGINT at depth 1200: exit 0 after 2.0 s, the volume complete (1200 slices, in order).

``--only burst --burst 1000 1024 --burst-period 64`` (1000 slices of 1024 x 1024 px, 64 rendered and
repeated). Before this round (load 8-10): peak resident memory 1097 MB up to depth 100, 5196 MB up to
1000 (ratio 4.74), the verdict 235 slices behind at the end, SIGINT exit after 145 s; with
``windows_per_update=2``: 3596 MB (ratio 3.27), 208 behind, 86 s. Causes found: the picture thread kept
every slice's grey and labels alive (views of the rows it keeps: 3 MB per slice at 1024^2), the expensive
windows ran inside the update (the verdict waited for them), and Ctrl-C waited for them and for a round
of pictures (about 6 s at this size). After (2026-11-30, load 5-7; the agent stored 1.2 slices/s):
peak resident memory 1232 MB up to depth 100, 1533 MB up to depth 1000 (ratio 1.24, target <= 1.5;
sampled 1058-1269 MB at depth 200-1000); the verdict 3 slices behind the stored volume when the last
slice was stored (worst 14, median 5) and about the last slice 2.1 s after it was stored; SIGINT at
depth 1000: exit 0 after 2.5 s, the volume complete. At 512 x 512 x 600: peak 615 / 822 MB (1.34),
exit 6.1 s, before the pictures fix 689 / 1075 MB.

``--only end-to-end`` (3 seeds, 96 slices of 128 x 128 px, after the feature size was fixed on the first
8 slices; load 3-8): agent stop 75 / 59 / 96, the tracker alone on the stored labels 76 / 60 / 96: all
within one update (exit 0 each, 52-63 s). Before, seed 2's agent never stopped (its first update at
depth 1 gave other blocks than the tracker's first at depth 4).

``--only signals`` after the background windows (2026-11-30, load 3-6): seconds from signal to exit, exit
0 and the volume complete in every case: depth 100: SIGINT 0.9, SIGTERM 1.6; depth 1000: SIGINT 1.2,
SIGTERM 1.4. Round 3 (128 x 128 px, signal as soon as the last slice is stored), seconds from signal to
exit (exit 0, volume complete in every case): depth 100: SIGINT 4.1, SIGTERM 3.3; depth 1000: SIGTERM
3.6 (SIGINT at 1200: 2.0 above). Before the fix in ``AnalysisWorker.wait_idle`` an interrupted run whose
last update was fewer than ``analysis.every_slices`` slices behind never exited.

``--only porespy``: the same 112 cubes through ``porespy.metrics.rev_porosity`` agree exactly (max
difference of the relative std 0.0); revwatch 11.8x faster on them.
"""

from __future__ import annotations

import argparse
import math
import pickle
import time
import tracemalloc

import numpy as np
from scipy import stats

from processing.rev import RevTracker, default_metrics, default_tracked, subvolume_curve
from processing.synthetic import generate_microstructure

SPACING = (0.05, 0.05, 0.05)  # um; isotropic so that the radii below are pixels x 0.05
ROWS = 32  # slices are ROWS x width px: a thin slab in y keeps 30 seeds per family affordable
STEP = 4  # slices per update (the agent's analysis.every_slices)
TOLERANCE = 0.05
CONFIDENCE = 0.95
MAX_BLOCK_VOXELS = 1 << 17  # tortuosity blocks: a window of at most this many voxels

DEFINITIONS = f"""Definitions
  H              planned depth; every volume is generated to exactly H slices and the tracker is told H.
  stop           first update (every {STEP} slices) at which the tracker latches its stop; 'never' if none by H.
  oracle         hindsight oracle of a seed: the smallest update depth from which every tracked metric's running
                 value stays within the tolerance ({TOLERANCE:.0%}) of its value at H.
  premature      a stop shallower than the seed's oracle.
  d_ref          reference rule: the same bound (trend over H extrapolated from the slope's standard error, plus
                 the sampling of the rest) with the family's true statistics - long-run variance of each metric
                 per unit = k x the variance of its means over slabs of k units (4 batches) pooled over all seeds
                 and depths, mean over the seeds, no fitted trend (the true one is 0), z = {stats.norm.ppf(0.5 + CONFIDENCE / 2):.2f}
                 - at the same confidence and horizon; the smallest update depth where every metric satisfies it.
                 It needs no floor. (The generator makes each volume's phase fractions exact, so the running
                 fraction at H is the same for every seed: the slab variance, not the variance at H, is used.)
  flagged        seeds ever declared 'not stationary' during the run (any metric, any update).
  saved          share of H not acquired: 1 - median stop / H.
  prediction     slices still needed, predicted at the update nearest 25/50/75 % of the stop depth, against the
                 actual remainder (stop - depth): |predicted - actual| / actual; 'within range': the actual
                 remainder lies in the stated slices_needed_range (long-run variance and future slope at their 10 and 90 %
                 quantiles)."""


def families(seeds, graded_seeds):
    """(name, H, width, radius px, gradient, seeds)."""
    out = []
    for r_px, depth in ((4, 320), (8, 320), (16, 640)):
        for width in (256, 1024):
            out.append((f"r{r_px}px w{width}", depth, width, r_px, 0.0, seeds))
    # Active fraction a(z) = a0 (1 + g (z/H - 1/2)): running mean at H/2 is a0 (1 - g/4), at H a0,
    # so g = +-0.5 moves it by 12.5 % >= 2 x 5 %.
    out.append(("graded r8px w256 +", 320, 256, 8, 0.5, graded_seeds))
    out.append(("graded r4px w256 -", 320, 256, 4, -0.5, graded_seeds))
    return out


def track(labels, depth_planned, *, rng=0):
    """Feed `labels` every STEP slices; returns (stop, per-update docs summary, final tracker)."""
    tracker = RevTracker(spacing_um=SPACING, metrics=default_tracked(), tolerance=TOLERANCE, confidence=CONFIDENCE,
                         planned_depth_slices=depth_planned, subvolume_samples=0, max_block_voxels=MAX_BLOCK_VOXELS,
                         rng=rng)
    stop, flagged, needed, depths = None, False, [], []
    for d in range(STEP, labels.shape[0] + 1, STEP):
        doc = tracker.update(labels[:d])
        flagged = flagged or bool(doc["not_stationary"])
        needed.append((doc["slices_needed"], doc["slices_needed_range"]))
        depths.append(d)
        if stop is None and tracker.stop is not None:
            stop = d
    return stop, flagged, np.array(depths), needed, tracker


def oracle(tracker, names, depths):
    """Hindsight oracle on the update grid, from the tracker's running values."""
    outside = np.zeros(len(depths), bool)
    for name in names:
        h = tracker.history(name)
        values = h[:, 1]
        final = values[-1]
        outside |= ~(np.abs(values - final) <= TOLERANCE * abs(final))
    idx = np.nonzero(outside)[0]
    if not idx.size:
        return int(depths[0])
    return int(depths[min(idx[-1] + 1, len(depths) - 1)])


def reference_depth(runs, depth_planned, names):
    """d_ref: the bound with the ensemble's statistics (see DEFINITIONS)."""
    z = stats.norm.ppf(0.5 + CONFIDENCE / 2)
    need = STEP
    for name in names:
        unit = runs[0]["series"][name][2]
        k = max(1, round(4 * runs[0]["batch"][name] / unit))  # slabs of 4 batches: beyond the correlations
        means, weights = [], []
        for r in runs:
            v, w, _ = r["series"][name]
            ok = np.isfinite(v) & (w > 0)
            v, w = v[ok], w[ok]
            n = v.size // k * k
            if n < k:
                continue
            vw, ws = (v[:n] * w[:n]).reshape(-1, k).sum(axis=1), w[:n].reshape(-1, k).sum(axis=1)
            means += list(vw / ws)
            weights += list(ws / k)
        if len(means) < 3:
            continue
        means, weights = np.array(means), np.array(weights)
        mean = float(np.average(means, weights=weights))
        # per-unit long-run variance: k units per slab, residuals linearised as in horizon_bound
        s2 = k * float(np.mean((weights / weights.mean() * (means - mean)) ** 2))
        horizon = depth_planned / unit
        for d in range(STEP, depth_planned + 1, STEP):
            m = d // unit
            if m < 3:
                continue
            sxx = m * (m * m - 1) / 12
            se = math.sqrt(s2 * ((0.5 * (horizon - m)) ** 2 / sxx + max(1 / m - 1 / horizon, 0)))
            if z * se <= TOLERANCE * abs(mean):
                need = max(need, d)
                break
        else:
            need = depth_planned
    return need


def run_families(seeds, graded_seeds, dump=None, only=None):
    print(DEFINITIONS)
    print(f"\nSlices {ROWS} x width px, spacing {SPACING} um, tolerance {TOLERANCE:.0%}, confidence {CONFIDENCE:.0%}, "
          f"tracked: {', '.join(m.name for m in default_tracked())}")
    head = (f"{'family':<20} {'H':>4} {'seeds':>5} {'d_ref':>5} {'med stop':>8} {'stop/ref':>8} {'never':>5} "
            f"{'premat':>6} {'flagged':>7} {'stop/orc':>8} {'saved':>6} {'s/seed':>6}")
    print(head)
    summary = {"premature": 0, "stationary": 0, "flagged": 0, "graded_premature": 0, "graded_stops": 0,
               "pred": {0.25: [], 0.5: [], 0.75: []}, "ratios": []}
    names = [m.name for m in default_tracked()]
    for name, depth, width, r_px, gradient, fam_seeds in families(seeds, graded_seeds):
        if only and name not in only:
            continue
        runs, t0 = [], time.perf_counter()
        for seed in fam_seeds:
            labels = generate_microstructure((depth, ROWS, width), spacing_um=SPACING, particle_radius_um=r_px * SPACING[1],
                                             gradient=gradient, rng=seed)
            stop, flagged, depths, needed, tracker = track(labels, depth, rng=seed)
            doc = tracker.document()
            series = {n: (np.array(st.values), np.array(st.weights), st.unit or 1) for n, st in zip(names, tracker._states)}
            batch = {n: doc["metrics"][n]["batch_slices"] for n in names}
            runs.append(dict(stop=stop, flagged=flagged, oracle=oracle(tracker, names, depths), depths=depths,
                             needed=needed, series=series, batch=batch, doc=doc))
        per_seed = (time.perf_counter() - t0) / len(fam_seeds)
        if dump:
            with open(dump, "ab") as f:
                pickle.dump((name, depth, gradient, [{k: v for k, v in r.items() if k != "doc"} for r in runs]), f)
        d_ref = reference_depth(runs, depth, names) if gradient == 0 else None
        stops = np.array([r["stop"] if r["stop"] is not None else np.nan for r in runs], float)
        never = int(np.isnan(stops).sum())
        premature = sum(r["stop"] is not None and r["stop"] < r["oracle"] for r in runs)
        flagged = sum(r["flagged"] for r in runs)
        med = float(np.nanmedian(stops)) if never < len(runs) else math.nan
        orc = np.nanmedian([r["stop"] / r["oracle"] for r in runs if r["stop"] is not None]) if never < len(runs) else math.nan
        ratio = med / d_ref if d_ref else math.nan
        saved = 1 - med / depth if math.isfinite(med) else 0.0
        print(f"{name:<20} {depth:>4} {len(runs):>5} {d_ref if d_ref else '-':>5} {med:>8.0f} {ratio:>8.2f} {never:>5} "
              f"{premature:>6} {flagged:>7} {orc:>8.2f} {saved:>6.0%} {per_seed:>6.1f}")
        if gradient == 0:
            summary["stationary"] += len(runs)
            summary["premature"] += premature
            summary["flagged"] += flagged
            summary["ratios"].append((name, ratio))
            for r in runs:
                if r["stop"] is None:
                    continue
                for p in summary["pred"]:
                    k = int(np.argmin(np.abs(r["depths"] - p * r["stop"])))
                    actual = r["stop"] - r["depths"][k]
                    if actual <= 0:
                        continue
                    pred, (low, high) = r["needed"][k][0], r["needed"][k][1] or (None, None)
                    summary["pred"][p].append((math.inf if pred is None else (pred - actual) / actual,
                                               low is not None and low <= actual <= high))
        else:
            summary["graded_premature"] += premature
            summary["graded_stops"] += len(runs) - never
            active = [r["doc"]["metrics"]["volume_fraction.active"] for r in runs]
            print(f"{'':<20} not stationary at the end in {sum(a['not_stationary'] for a in active)}/{len(runs)}; "
                  f"first reason: {runs[0]['doc']['reasons'][0][:100] if runs[0]['doc']['reasons'] else '-'}")
    n = summary["stationary"]
    print(f"\nTargets")
    print(f"  premature stops, stationary: {summary['premature']}/{n} = {summary['premature'] / n:.1%} (target <= 2 %)")
    print(f"  premature stops, graded:     {summary['graded_premature']} (target 0); graded seeds stopped at all: "
          f"{summary['graded_stops']}")
    worst = max(summary["ratios"], key=lambda t: t[1] if math.isfinite(t[1]) else math.inf)
    print(f"  median stop / d_ref:         worst {worst[1]:.2f} ({worst[0]}) (target <= 1.3 in every family)")
    print(f"  ever 'not stationary':       {summary['flagged']}/{n} = {summary['flagged'] / n:.1%} (target <= 5 %)")
    for p, pairs in summary["pred"].items():
        if pairs:
            errs, inside = (np.array(c, float) for c in zip(*pairs))
            print(f"  prediction at {p:.0%} of the stop: median |error| {np.median(np.abs(errs)):.0%} of the slices still "
                  f"needed, median signed {np.median(errs):+.0%}, actual within the stated range in "
                  f"{inside.mean():.0%} ({len(errs)} seeds; target <= 25 %)")
    allerr = np.abs([e for pairs in summary["pred"].values() for e, _ in pairs])
    if allerr.size:
        print(f"  prediction overall: median |error| {np.median(allerr):.0%}")


def trend_replay(dump):
    """'Ever not stationary' of the tracker's trend test replayed on the unit series of a --dump
    (the same looks and levels as the tracker; the batch is the one of the final update)."""
    from processing.rev import look_level, slope_test

    print(f"\nTrend test replayed on the dumped unit series of every seed ({dump})")
    print(f"{'family':<20} {'seeds':>5} {'flagged':>7}  metrics flagged (seed@depth)")
    total = flagged_total = 0
    with open(dump, "rb") as f:
        while True:
            try:
                name, depth, gradient, runs = pickle.load(f)
            except EOFError:
                break
            flagged, where = 0, []
            for si, r in enumerate(runs):
                hit = False
                for metric, (v, w, unit) in r["series"].items():
                    batch = max(1, math.ceil(r["batch"][metric] / unit))
                    looks, next_look = 0, 0  # the bound's batch; the test's is twice it, as in the tracker
                    for d in range(STEP, depth + 1, STEP):
                        vv, ww = v[: d // unit], w[: d // unit]
                        if np.count_nonzero(np.isfinite(vv) & (ww > 0)) < 6 * batch or d < next_look:
                            continue
                        looks, next_look = looks + 1, math.ceil(d * 1.25)
                        t = slope_test(vv, weights=ww, batch=2 * batch, unit_um=unit * SPACING[0], horizon_units=depth / unit,
                                       significance=look_level(looks, 0.05 / len(r["series"])), tolerance=TOLERANCE,
                                       name=metric)
                        if t.not_stationary:
                            hit = True
                            where.append(f"{metric.split('.')[0]}({si}@{d})")
                            break
                flagged += hit
            print(f"{name:<20} {len(runs):>5} {flagged:>7}  {' '.join(where[:6])}")
            if gradient == 0:
                total += len(runs)
                flagged_total += flagged
    print(f"stationary seeds ever flagged: {flagged_total}/{total} = {flagged_total / max(total, 1):.1%} (target <= 5 %)")


class LazyVolume:
    """(depth, 1024, 1024) labels made on demand from a periodic tile; counts the bytes read."""

    def __init__(self, depth, tile):
        self.tile = tile
        self.shape = (depth, 1024, 1024)
        self.dtype = tile.dtype
        self.bytes_read = 0

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        z = key[0]
        zs = np.arange(*z.indices(self.shape[0])) if isinstance(z, slice) else np.array([z])
        ty, tx = self.tile.shape[1:]
        slab = np.tile(self.tile[zs % self.tile.shape[0]], (1, 1024 // ty, 1024 // tx))
        out = slab[(slice(None), *key[1:])] if isinstance(z, slice) else slab[(0, *key[1:])]
        self.bytes_read += out.nbytes
        return out


def cost():
    """Bytes read per update and peak memory of an update at depth ~100 and ~1000 of 1024 x 1024 slices."""
    tile = generate_microstructure((64, 256, 256), spacing_um=SPACING, particle_radius_um=0.4, rng=0)
    volume = LazyVolume(1100, tile)
    tracker = RevTracker(spacing_um=SPACING, metrics=default_tracked(), planned_depth_slices=2000, rng=0)
    rows = {}
    for d in range(STEP, 1100 + 1, STEP):
        window = 100 <= d < 100 + 20 * STEP or 1000 <= d < 1000 + 20 * STEP
        if window:
            before = volume.bytes_read
            tracemalloc.start()
            t0 = time.perf_counter()
        tracker.update(_View(volume, d))
        if window:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            key = 100 if d < 1000 else 1000
            rows.setdefault(key, []).append((volume.bytes_read - before, peak, time.perf_counter() - t0))
    print(f"\nCost of an update ({STEP} new slices of 1024 x 1024, default tracked set, 20 updates from each depth)")
    print(f"{'depth':>6} {'MB read/update':>14} {'max MB read':>11} {'peak MB (mean)':>14} {'peak MB (max)':>13} {'s/update':>8}")
    for key, r in rows.items():
        b, p, t = (np.array(c, float) for c in zip(*r))
        print(f"{key:>6} {b.mean() / 1e6:>14.1f} {b.max() / 1e6:>11.1f} {p.mean() / 1e6:>14.1f} {p.max() / 1e6:>13.1f} "
              f"{np.median(t):>8.2f}")
    b100, b1000 = (np.mean([x[0] for x in rows[k]]) for k in (100, 1000))
    p100, p1000 = (np.max([x[1] for x in rows[k]]) for k in (100, 1000))
    print(f"ratio depth 1000 / depth 100: bytes read {b1000 / b100:.2f}, peak memory {p1000 / p100:.2f} (target <= 1.5)")


class _View:
    """The first `depth` slices of a LazyVolume (what the store has committed)."""

    def __init__(self, volume, depth):
        self.v, self.shape, self.dtype = volume, (depth, *volume.shape[1:]), volume.dtype

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        z = key[0]
        if isinstance(z, slice):
            z = slice(*z.indices(self.shape[0]))
        return self.v[(z, *key[1:])]


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


def end_to_end(seeds=(0, 1, 2), depth=96, width=128, r_px=3):
    """Render seeds as slices, run ``revwatch run --exit-when-representative --planned-slices H`` on them,
    and compare its stop with the tracker alone on the labels the agent stored, fed every STEP slices."""
    import json
    import os
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    from agent.publish import free_loopback_endpoint
    from agent.store import VolumeStore
    from processing.synthetic import render_acquisition, write_acquisition

    spacing = (0.05, 0.02, 0.02)
    print(f"\nEnd to end: {len(seeds)} seeds, {depth} slices of {width} x {width} px, r = {r_px} px, planned depth = "
          f"{depth} slices, revwatch run --exit-when-representative (all slices present at start: a burst)")
    print(f"{'seed':>4} {'agent stop':>10} {'agent updates near it':>22} {'tracker alone':>13} {'within 1 update':>15} {'exit':>4} {'s':>5}")
    for seed in seeds:
        gen = np.random.default_rng(seed)
        labels = generate_microstructure((depth, width + 96, width + 96), spacing_um=spacing,
                                         particle_radius_um=r_px * spacing[1], rng=gen)
        acq = render_acquisition(labels, rng=gen, field_shape=(width, width))
        with tempfile.TemporaryDirectory() as tmp:
            folder, volume = Path(tmp) / "acq", Path(tmp) / "run.ome.zarr"
            write_acquisition(acq, folder, layout="fei", pixel_size_um=spacing[1], slice_spacing_um=spacing[0])
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "agent.cli", "run", str(folder), "--volume", str(volume),
                 "--exit-when-representative", "--planned-slices", str(depth), "--idle-exit-s", "20",
                 "--endpoint", free_loopback_endpoint(), "--set", "processing.calibration_slices=4",
                 "--set", "acquisition.settle_s=0.05"],
                capture_output=True, text=True, env={**os.environ}, timeout=1800)
            elapsed = time.perf_counter() - t0
            events = [json.loads(line) for line in Path(str(volume) + ".events.jsonl").read_text().splitlines()]
            revs = [e for e in events if e["topic"] == "rev"]
            stop = next((e for e in events if e["topic"] == "stop"), None)
            agent_stop = stop["depth_slices"] if stop else None
            store = VolumeStore.open(volume, read_only=True)
            stored = np.asarray(store.labels[:])
            tracker = RevTracker(spacing_um=store.spacing_um, metrics=default_tracked(), planned_depth_slices=depth, rng=0)
            alone = None
            for d in range(STEP, stored.shape[0] + 1, STEP):
                tracker.update(stored[:d])
                if tracker.stop is not None:
                    alone = d
                    break
            updates = sorted({e["depth_slices"] for e in revs})
            near = [u for u in updates if agent_stop is not None and abs(u - agent_stop) <= 12]
            if agent_stop is None or alone is None:
                ok = agent_stop is None and alone is None
            else:
                k = updates.index(agent_stop)
                lo = updates[k - 1] if k else 0
                ok = lo <= alone <= agent_stop + STEP
            print(f"{seed:>4} {str(agent_stop):>10} {str(near):>22} {str(alone):>13} {str(ok):>15} "
                  f"{proc.returncode:>4} {elapsed:>5.0f}")


def _rendered(folder, depth, width, *, seed=0, r_px=3, spacing=(0.05, 0.02, 0.02), period=None):
    """`depth` slices of `width` x `width` px rendered from fine particles, written as Auto Slice & View
    does into `folder`; returns the slice files in order. With `period`, only that many slices are
    rendered, without drift, and repeated (large slices for a memory measurement, whose structure
    does not matter)."""
    import dataclasses

    from processing.synthetic import render_acquisition, simulate_drift, write_acquisition

    gen = np.random.default_rng(seed)
    n = depth if period is None else min(period, depth)
    labels = generate_microstructure((n, width + 96, width + 96), spacing_um=spacing,
                                     particle_radius_um=r_px * spacing[1], rng=gen)
    drift = simulate_drift(n, rng=gen)  # the default drift, its walk shrunk to fit a margin of 40 px
    drift *= 0.0 if period is not None else min(1.0, 40.0 / max(np.abs(drift).max(), 1e-9))
    acq = render_acquisition(labels, rng=gen, field_shape=(width, width), drift_px=drift)
    if n < depth:
        cycle = np.arange(depth) % n
        acq = dataclasses.replace(acq, slices=acq.slices[cycle], drift_px=acq.drift_px[cycle],
                                  labels=acq.labels[cycle], gain=acq.gain[cycle], offset=acq.offset[cycle])
    return write_acquisition(acq, folder, layout="fei", pixel_size_um=spacing[1], slice_spacing_um=spacing[0])


def _agent(folder, volume, *extra):
    """``revwatch run`` on `folder` in the background, its log beside the volume (a pipe nobody reads
    would fill and block the agent)."""
    import os
    import subprocess
    import sys

    from agent.publish import free_loopback_endpoint

    with open(str(volume) + ".log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "agent.cli", "run", str(folder), "--volume", str(volume),
             "--endpoint", free_loopback_endpoint(), "--set", "processing.calibration_slices=4",
             "--set", "acquisition.settle_s=0.05", *extra],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ})


def _events(volume):
    import json
    from pathlib import Path

    path = Path(str(volume) + ".events.jsonl")
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:  # the line being written
            break
    return out


def _rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:"))


def burst(depth=1200, width=128, period=None):
    """A burst through the real agent: `depth` slices copied into the watched folder as fast as they can
    be written while ``revwatch run`` watches it. The lag, in slices, of the REV verdict behind the volume;
    the agent's resident memory against depth; then SIGINT once the last slice is stored: time to exit."""
    import shutil
    import signal as _signal
    import tempfile
    from pathlib import Path

    from agent.store import VolumeStore

    print(f"\nBurst: {depth} slices of {width} x {width} px copied into the watched folder as fast as they can be "
          f"written, revwatch run --planned-slices {depth} (default tracked set and analysis.every_slices)")
    with tempfile.TemporaryDirectory() as tmp:
        staging, folder, volume = Path(tmp) / "staging", Path(tmp) / "acq", Path(tmp) / "run.ome.zarr"
        files = _rendered(staging, depth, width, period=period, r_px=3 if period is None else 8)
        shutil.copytree(staging, folder, ignore=lambda d, names: [n for n in names if n.endswith(".tif")])
        proc = _agent(folder, volume, "--planned-slices", str(depth), "--idle-exit-s", "600")
        time.sleep(3)
        t0 = time.perf_counter()
        for f in files:
            shutil.copyfile(f, folder / f.relative_to(staging))
        t_written = time.perf_counter() - t0
        rss = []  # (stored depth, MB)
        while proc.poll() is None:
            status = [e for e in _events(volume) if e["topic"] == "status"]
            stored = status[-1]["depth_slices"] if status else 0
            rss.append((stored, _rss_mb(proc.pid)))
            if stored >= depth:
                break
            time.sleep(1.0)
        t_signal = time.perf_counter()
        proc.send_signal(_signal.SIGINT)
        proc.wait(timeout=600)
        t_exit = time.perf_counter() - t_signal
        events = _events(volume)
        store = VolumeStore.open(volume, read_only=True)
        complete = [s["index"] for s in store.slices] == list(range(1, depth + 1))
    t_start = next(e["time_unix_s"] for e in events)
    rev_depth, lags = 0, []
    for e in events:
        if e["topic"] == "rev":
            rev_depth = e["depth_slices"]
        elif e["topic"] == "status" and e.get("state") == "processing":
            lags.append((e["time_unix_s"], e["depth_slices"], e["slices_seen"], rev_depth))
    t_last, committed, seen, verdict = lags[-1]
    caught = next((e["time_unix_s"] for e in events if e["topic"] == "rev" and e["depth_slices"] >= committed), None)
    revs = [e for e in events if e["topic"] == "rev"]
    print(f"written in {t_written:.1f} s ({depth / t_written:.0f} slices/s); the agent stored {committed} slices in "
          f"{t_last - t_start:.0f} s ({committed / (t_last - t_start):.1f} slices/s); {len(revs)} rev documents")
    print(f"{'lag of the verdict, slices':<42} {'behind stored':>13} {'behind seen':>11}")
    print(f"{'  when the last slice was stored':<42} {committed - verdict:>13} {seen - verdict:>11}")
    print(f"{'  worst during the burst':<42} {max(c - v for _, c, _, v in lags):>13} {max(s - v for _, _, s, v in lags):>11}")
    print(f"  median during the burst                  {np.median([c - v for _, c, _, v in lags]):>13.0f} "
          f"{np.median([s - v for _, _, s, v in lags]):>11.0f}")
    print(f"verdict about the last slice {caught - t_last:.1f} s after it was stored" if caught else
          "no verdict about the last slice before the signal")
    near = {d: min(rss, key=lambda r: abs(r[0] - d)) for d in (100, depth)}
    print(f"agent resident memory: {near[100][1]:.0f} MB at depth {near[100][0]}, {near[depth][1]:.0f} MB at depth "
          f"{near[depth][0]} (ratio {near[depth][1] / near[100][1]:.2f}), peak sampled {max(r[1] for r in rss):.0f} MB")
    early = max((r[1] for r in rss if r[0] <= 100), default=float("nan"))
    print(f"agent peak resident memory (sampled every second): {early:.0f} MB up to depth 100, "
          f"{max(r[1] for r in rss):.0f} MB up to depth {committed} (ratio {max(r[1] for r in rss) / early:.2f})")
    steps = range(100, committed + 1, max(100, committed // 10 // 100 * 100))
    print("agent resident memory, MB, at depth: " + ", ".join(
        f"{d}: {min(rss, key=lambda r: abs(r[0] - d))[1]:.0f}" for d in steps))
    print(f"SIGINT at depth {committed}: exit {proc.returncode} after {t_exit:.1f} s, volume complete: {complete}")


def signals(depths=(100, 1000), width=128, names=("SIGINT", "SIGTERM")):
    """Time from SIGINT / SIGTERM to exit of ``revwatch run`` once `depth` slices are stored, and
    whether the volume is complete."""
    import signal as _signal
    import tempfile
    from pathlib import Path

    from agent.store import VolumeStore

    print(f"\nStopping the agent: slices of {width} x {width} px all in the folder at start; the signal is sent as "
          f"soon as the last one is stored (the analysis may be mid-update)")
    print(f"{'depth':>5} {'signal':>7} {'s to exit':>9} {'exit':>4} {'stored':>6} {'complete':>8}")
    for depth in depths:
        for sig in (getattr(_signal, name) for name in names):
            with tempfile.TemporaryDirectory() as tmp:
                folder, volume = Path(tmp) / "acq", Path(tmp) / "run.ome.zarr"
                _rendered(folder, depth, width)
                proc = _agent(folder, volume, "--planned-slices", str(10 * depth), "--idle-exit-s", "600")
                while proc.poll() is None:
                    status = [e for e in _events(volume) if e["topic"] == "status"]
                    if status and status[-1]["depth_slices"] >= depth:
                        break
                    time.sleep(0.2)
                t0 = time.perf_counter()
                proc.send_signal(sig)
                proc.wait(timeout=600)
                elapsed = time.perf_counter() - t0
                store = VolumeStore.open(volume, read_only=True)
                complete = ([s["index"] for s in store.slices] == list(range(1, depth + 1))
                            and np.asarray(store.labels[:]).shape[0] == depth)
                print(f"{depth:>5} {_signal.Signals(sig).name:>7} {elapsed:>9.1f} {proc.returncode:>4} {store.depth:>6} "
                      f"{str(complete):>8}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=30, help="seeds per stationary family")
    parser.add_argument("--graded-seeds", type=int, default=10, help="seeds per graded family")
    parser.add_argument("--no-cost", action="store_true")
    parser.add_argument("--dump", help="append each family's raw results (pickle) to this file")
    parser.add_argument("--no-porespy", action="store_true")
    parser.add_argument("--family", action="append", metavar="NAME",
                        help="only this family (repeat for several; names as printed, e.g. 'r8px w1024')")
    parser.add_argument("--end-to-end", action="store_true", help="also run the agent on rendered slices")
    parser.add_argument("--only", choices=["families", "cost", "porespy", "end-to-end", "trend-replay", "burst", "signals"])
    parser.add_argument("--burst", type=int, nargs=2, metavar=("DEPTH", "WIDTH"), default=(1200, 128),
                        help="slices and their width for the burst (default 1200 128)")
    parser.add_argument("--burst-period", type=int, metavar="N",
                        help="render only N slices, without drift, and repeat them (large slices, for memory)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.only in (None, "families"):
        run_families(list(range(args.seeds)), list(range(100, 100 + args.graded_seeds)), dump=args.dump,
                     only=args.family)
    if args.only == "cost" or (args.only is None and not args.no_cost):
        cost()
    if args.only == "porespy" or (args.only is None and not args.no_porespy):
        porespy_comparison((128, 128, 128))
    if args.only == "trend-replay":
        trend_replay(args.dump)
    if args.only == "end-to-end" or (args.only is None and args.end_to_end):
        end_to_end()
    if args.only == "burst" or (args.only is None and args.end_to_end):
        burst(*args.burst, period=args.burst_period)
    if args.only == "signals" or (args.only is None and args.end_to_end):
        signals()
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
