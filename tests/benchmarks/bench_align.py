"""Registration that cannot crash and does not bend (issue 11): accuracy, honesty and cost.

Prints one row per case: the RMS and worst error of the applied shift against the true drift,
the RMS after removing a constant offset of the whole stack (the canvas is defined by one
noisy first slice), the reported error (``DriftEstimate.residual_px``, RMS) over the true one,
how many slices truly wandered more than 1 px and how many were flagged (``wander``), the
unreliable (predicted) slices and the slices skipped (must be 0), and the median time per
slice. ``old`` is the tracker before issue 11 (git 845b784, loaded from the repository's
history), on the same slices.

Cases
-----
- ``cap``: 300 slices of 256^2, stage drift 0.6 px/slice, a 40-row cap with the fiducial X,
  its grain drawn anew in every slice (tests/test_drift_fiducial.py ``changing_cap``); new =
  ``DriftTracker(interface_row=40)`` (what the chain does with ``cap_rows``), old = ``roi`` on
  the cap rows (what the old chain did).
- ``whole``: no cap, evolving microstructure, radii 0.5-3 um at 20 nm/px (25-150 px), drift
  0.2-2 px/slice with jumps; whole-slice registration.
- ``two-phase``: round particles in one matrix, 200 slices of 256^2, 1 px/slice (the issue's
  false -64 px jump case).
- ``2048``: a few slices of 2048^2 (no crash, no skip, cost).
- ``random``: ``--seeds`` (12) domain-randomised acquisitions of processing/scenarios.py, 200
  slices of 256^2 (cap present or absent, radii 5-150 px, drift 0.2-2 px/slice with jumps,
  margins, circular fields, brightness drops, charging, tilted curtains, a magnification change),
  on the raw slices and, in cap mode, also as the chain feeds them (``chain``: corrected with a
  model fitted on the first 8 slices, the margins found on the raw slice, held slices given
  ``DriftTracker.skip()``): ``band``
  = what the chain does without ``cap_rows`` (find_reference_band on the first 10 slices, the whole
  slice when none), ``whole`` = whole-slice registration, ``cap_rows`` = ``interface_row`` at the
  true cap rows (the chain with ``cap_rows`` configured). The summary gives, per group, the median
  and worst RMS, the reported/true residual ratio and the share of slices whose ``wander`` flag
  is right (flagged exactly where the true error exceeds 1 px).
- ``pystack3d``: pystack3d's own synthetic stack, its generator reproduced from
  ``examples/ex_synthetic_stack.py`` (CEA-MetroCarac/pystack3d, ``synthetic_images_generation``):
  ``skimage.data.binary_blobs(340, n_dim=3, blob_size_fraction=0.07, volume_fraction=0.5,
  rng=3)``, Gaussian blur 2, cropped to 300^3, x0.5; slices 20-69 shifted by 10 px along the
  saved images' x when ``k % 20 > 10``; contrast changes on slices 75-99; odd slices from 100
  on deleted (200 slices left, z from the file names ``0.01 k`` um); an x*y*z background;
  curtains on slices 0 and 83 (pyvsnr's Gabor kernel, as the example); 40 empty rows padded
  (``cropping``), saved transposed as uint8. The truth is (0, -10) px on the shifted slices.

Measured (issue 11, git wip/align, load 5.8-14 on 2 cores shared with 2 other engineers, so
the ms/slice are not speed figures; ``--skip cap,whole,two-phase,2048,1024,pystack3d,band,rnd-whole,old
--seeds 24``, cap mode only; the whole-slice, band and pystack3d cases are unchanged by these
commits, their figures are the previous session's). ``random``, cap mode (``cap_rows``), RMS px
(reported/true):

====  =============================================  ==============  ============
seed  case                                           before          after
====  =============================================  ==============  ============
0     cap 37, no fiducial, r120, curtains 0.34       0.237 (0.42)    0.135 (0.80)
2     cap 50, no fiducial, tilt 14                   0.067           0.042 (1.01)
3     cap 29 + fiducial, tilt 14, noise 24 %         0.386           0.138 (1.17)
4     cap 25, no fiducial, r108, 6 drops, dy 10.6    0.601           0.267 (0.69)
6     cap 56 + fid, circle, 9 drops, 2 charging      0.197           0.094 (1.15)
7     cap 49 + fid, margins                          0.230           0.098 (0.94)
8     cap 54 + fid, 2 charging                       0.048           0.033 (1.00)
9     cap 26 + fid, tilt 10, curtains 0.32, margins  2.607           0.618 (0.42)
11    cap 26, no fid, r126, blur 2, margins, mag     44.2 (all)      57.4 (0.09)
16    cap 53                                         (not run)       0.124 (0.40)
19    cap 52                                         (not run)       0.136 (0.79)
23    cap 39                                         (not run)       0.052 (0.90)
====  =============================================  ==============  ============

10 of 12 cases <= 0.3 px RMS (median 0.129). Not met: seed 9 (strong tilted curtains, fixed in
the raw frame, pull both the correlation and the cap fit towards zero shift; the chain removes
curtains before the tracker, this benchmark feeds the raw slices), reported 0.42 of the truth
and the 17 slices over 1 px not flagged; seed 11 (cap without a fiducial, its grain blurred out
by a 2 px blur: x is not measurable from the cap, the cap fit is lost from slice ~10 on and the
whole-slice correlation runs away on 126 px particles; 71 of the 74 slices over 1 px are flagged
``wander``, the reported magnitude is 0.09 of the truth). Seed 11 is cut at its magnification
change (slice 86), as the chain refuses the later slices; before, the whole run was fed.
``cap`` (changing grain, 300 slices, this commit): with the X 0.417 / 0.276 / 0.254 px RMS
(seeds 0-2; reported/true 0.61-1.05), without the X 4.71 px (reported/true 2.11, 287 of 286
slices over 1 px flagged).

Issue 11, last round (git wip/align, load 3-6 on 2 cores shared with 2 other engineers' un-niced
benchmarks, so no ms/slice are speed figures; ``--skip cap,whole,two-phase,2048,1024,pystack3d,band,
rnd-whole,old,capraw --only 9,11,4,8,3,6,0,2,7,16,19,23``), cap mode as the chain feeds it, RMS px
(reported/true). ``margins`` = margins found on the raw slice (before: on the corrected slice,
whose margins the curtain correction stripes: seed 9 then 9.0 px), held slices keeping the last
shift outside the tracker; ``pattern`` = also the cap template's curtain profile, and held slices
given the *predicted* shift (``skip()`` as first written; it now keeps the last shift, as in
``margins``, and reports the prediction's error: seeds 4 and 8 not re-measured with it; the
profile is now learnt only where the first slice shows tilted curtains, as it took in the
fiducial's vertical arm on tests/test_drift_fiducial.py's changing cap: the seeds without tilted
curtains, 0, 4, 7, 11, 23, are not re-measured either):

====  ================================  ==============  ==============  ==============
seed  case                              raw (above)     chain, margins  chain, pattern
====  ================================  ==============  ==============  ==============
0     cap 37, no fid, r120              0.135 (0.80)    0.087 (1.09)    0.073 (1.15)
2     cap 50, tilt 14                   0.042 (1.01)    0.039 (1.13)    0.040 (1.20)
3     cap 29 + fid, tilt 14, 2 drops    0.138 (1.17)    0.187 (0.85)    0.197 (1.21)
4     cap 25, r108, 6 drops             0.267 (0.69)    0.361 (0.46)    0.399 (0.69)
6     cap 56 + fid, circle, charging    0.094 (1.15)    0.095 (1.14)    0.090 (1.19)
7     cap 49 + fid, margins             0.098 (0.94)    0.056 (1.28)    0.058 (1.23)
8     cap 54 + fid, 2 drops, 2 charg.   0.033 (1.00)    0.460 (0.06)    0.618 (0.70)
9     cap 26 + fid, tilt 10, curtains   0.618 (0.42)    0.490 (0.47)    0.368 (0.54)
11    cap 26, no fid, r126, blur 2      57.4 (0.09)     58.1 (0.08)     62.6 (0.08)
16    cap 53 + fid, tilt -11            0.124 (0.40)    0.078 (0.56)    0.075 (0.54)
19    cap 52, tilt -10                  0.136 (0.79)    0.114 (0.90)    0.085 (1.08)
23    cap 39                            0.052 (0.90)    0.044 (1.00)    0.048 (0.92)
====  ================================  ==============  ==============  ==============

Chain feed, pattern: 8 of 12 within 0.3 px RMS (median 0.087), reported/true median 1.00. Not
met: seed 9 (0.368: the curtains still pull 1.8 % of the shift towards zero, in the cap fit and in
the correlation alike), seed 11 (x is not in the cap; the 126 px inclined ellipsoids move ~3 px per
slice in the correlation, which runs away; flagged ``wander`` on 74 of 74 slices over 1 px, the
magnitude reported 0.08 of the truth), seeds 4 and 8 (all their error is on the held slices: seed
8, 2-5.4 px on slices 29, 30, 60, 75, 179, every other slice within 0.08 px).

Issue 11, this round (git wip/geometry; the same command; "before" is git d2f2295 on the same
slices, load 2-5). Cap mode as the chain feeds it, RMS px (reported/true): an axis the cap does
not measure is held where the correlation errs more than the stage moves, y alone is fitted on
the row profiles when x is free, the template is blended in only where the cap held both axes:

====  ================================  ==============  ==============
seed  case                              before          after
====  ================================  ==============  ==============
9     cap 26 + fid, tilt 10, curtains   0.368 (0.54)    0.368 (0.54)
11    cap 26, no fid, r126, blur 2      58.1 (0.08)     13.1 (0.87)
4     cap 25, r108, 6 drops             0.361 (0.76)    0.360 (0.76)
8     cap 54 + fid, 2 drops, 2 charg.   0.460 (0.94)    0.460 (0.94)
3     cap 29 + fid, tilt 14, 2 drops    0.187 (1.21)    0.187 (1.21)
6     cap 56 + fid, circle, charging    0.090 (1.19)    0.089 (1.20)
0     cap 37, no fid, r120              0.087 (1.09)    0.087 (1.09)
2     cap 50, tilt 14                   0.040 (1.20)    0.040 (1.20)
7     cap 49 + fid, margins             0.058 (1.23)    0.058 (1.23)
16    cap 53 + fid, tilt -11            0.078 (0.56)    0.078 (0.56)
19    cap 52, tilt -10                  0.085 (1.08)    0.085 (1.08)
23    cap 39                            0.044 (1.00)    0.044 (1.00)
====  ================================  ==============  ==============

Median 0.088 px RMS before and after, 8 of 12 within 0.3 px; worst 58.1 -> 13.1 px (seed 11:
the stage's own x excursion, held; it was the structure's), reported/true range 0.08-1.23 ->
0.54-1.23 (12 of 12 within a factor 2). Every other seed within 0.001 px of before.

Whole-slice wander (no cap), diagnosed: ``--skip cap,whole,two-phase,2048,1024,pystack3d,band,
capmode,old --only 1,5,10`` also registers the truth labels (no noise, no stage drift: they are on
the canvas) slice to previous slice and sums the steps: the structure's own apparent motion.
Seeds 1 / 5 / 10: tracker RMS 11.8 / 4.7 / 18.4 px, reported/true 0.82 / 1.09 / 1.09; the labels
alone wander to (-23.2, 18.9) / (-4.6, -1.0) / (-35.1, 26.9) px at slice 200, and the tracker's
per-slice step errors correlate with their steps (y 0.55 / 0.56 / 0.43, x 0.42 / 0.41 / 0.14).
The wander is the structure's (inclined features move in the section as it advances; no
registration by content can tell that from the stage), not a lone previous-slice registration:
on seeds 1 and 10 the joint solution over several references ends well below the labels' own
chained wander. Not explained by it: a mean x step error of +0.05 to +0.065 px/slice on all
three (seed 5's labels move -0.005 px/slice in x, its tracker ends 10.3 px off in x): a possible
bias, not investigated. Checked (wip/geometry): not the estimator's. ``phase_correlate`` of a
blurred particle image and its copy shifted by 0-0.9 px on either or both axes (noise 3 grey
levels): every error below 0.01 px; chained registration alone (``keyframe=False, lags=()``) of
a static structure under 1.5 px/slice of known drift, 150 slices: mean step error (+0.0005,
+0.0009) px/slice (tests/test_align.py ``test_chained_registration_has_no_step_bias``). Through the
chain (bench_label_chain.py, 150 slices) the mean step error of the no-cap seeds takes both signs
and differs per seed (x: 1 +0.02, 5 +0.10, 10 -0.08, 12 -0.30, 13 +0.01, 14 -0.84 px/slice): the
structure's apparent motion, not a bias.

pystack3d (wip/geometry, whole-slice registration, unchanged by the cap-mode changes of this
round): 1.739 px RMS, worst 4.03 px, y at the end -4.02 px (y error +1.49 at slice 50, +0.74 at
100, -1.01 at 150, -4.02 at 199: it walks faster after slice 100, where every other slice is
dropped and the structure changes twice as much per step), reported/true 1.30, ``wander`` on 140
of the 164 slices truly over 1 px. The stack is isotropic 3-D blobs with no z-invariant content:
its apparent motion is a random walk no registration by content removes; it is reported.

Run::

    PYTHONPATH=. python tests/benchmarks/bench_align.py --quick   # fewer seeds and slices
    PYTHONPATH=. python tests/benchmarks/bench_align.py
    PYTHONPATH=. python tests/benchmarks/bench_align.py --skip cap,whole,two-phase,2048,1024 --seeds 12
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from processing.align import DriftTracker
from processing.synthetic import generate_microstructure, render_acquisition, simulate_drift
from tests.test_drift_fiducial import changing_cap

ROOT = Path(__file__).resolve().parents[2]


def _old_tracker_class():
    """DriftTracker as it was before issue 11 (git 845b784), or None outside a git checkout."""
    try:
        source = subprocess.run(["git", "-C", str(ROOT), "show", "845b784:processing/align.py"],
                                capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = Path(os.environ.get("TMPDIR", "/tmp")) / "revwatch_align_845b784.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("revwatch_align_845b784", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.DriftTracker


def _chain_feed(slices, n_phases):
    """The slices as processing/chain.py feeds them to the tracker: corrected (brightness,
    curtains) with a model fitted on the first 8 slices with structure, None for a held slice
    (blank, charging), which the chain never registers; each as (raw, corrected)."""
    from processing.chain import _MIN_CONTRAST
    from processing.correct import BrightnessMonitor, fit_correction, slice_structure

    usable = [s for s in slices[:40] if slice_structure(s) >= _MIN_CONTRAST][:8]
    correction = fit_correction(usable, n_phases=n_phases, min_structure=_MIN_CONTRAST)
    checked = correction.apply_monitored(slices, BrightnessMonitor(correction.levels))
    return [None if quality.state == "held" else (raw, pixels) for raw, (_, quality, pixels) in zip(slices, checked)]


def _run(tracker, slices, truth):
    times, est = [], []
    for pixels in slices:
        t = time.perf_counter()
        if pixels is None:  # held by the chain: not registered
            est.append(tracker.skip())
        else:
            est.append(tracker.update(pixels[1], raw=pixels[0]) if isinstance(pixels, tuple) else tracker.update(pixels))
        times.append(time.perf_counter() - t)
    shifts = np.array([e.shift_px for e in est])
    error = shifts - truth
    norm = np.hypot(*error.T)
    offset = error[1:].mean(axis=0)
    residual = np.array([getattr(e, "residual_px", np.nan) for e in est])
    true_rms = float(np.sqrt((norm**2).mean()))
    return {
        "rms": true_rms,
        "max": float(norm.max()),
        "rms_no_offset": float(np.sqrt((np.hypot(*(error[1:] - offset).T) ** 2).mean())),
        "reported_ratio": float(np.sqrt(np.nanmean(residual**2)) / true_rms) if true_rms > 0 else np.nan,
        "wander_true": int((norm > 1.0).sum()),
        "wander_flagged": int(sum(bool(getattr(e, "wander", False)) for e in est)),
        "wander_agree": float(np.mean([bool(getattr(e, "wander", False)) == (v > 1.0) for e, v in zip(est, norm)])),
        "unreliable": int(sum(not e.reliable for e in est)),
        "skipped": len(slices) - len(est),
        "ms": 1e3 * float(np.median(times[1:])),
        "shifts": shifts,
    }


def _print(case, who, r):
    print(f"{case:34s} {who:4s} {r['rms']:7.3f} {r['max']:7.2f} {r['rms_no_offset']:8.3f} "
          f"{r['reported_ratio']:7.2f} {r['wander_true']:5d}/{r['wander_flagged']:<5d} {r['unreliable']:5d} "
          f"{r['skipped']:4d} {r['ms']:8.1f}")


def _evolving(n, size, *, radius_um, drift, seed, jump_probability=0.01, fractions=None, keep_cap=False):
    rng = np.random.default_rng(seed)
    d = simulate_drift(n, drift_px_per_slice=drift, jump_probability=jump_probability, jump_px=15.0, rng=rng)
    if keep_cap:
        d[:, 0] = -np.abs(d[:, 0])  # keep the cap in view
    margin = int(np.ceil(np.abs(d).max())) + 12
    options = {} if fractions is None else {"fractions": fractions}
    labels = generate_microstructure((n, size + 2 * margin, size + 2 * margin), particle_radius_um=radius_um,
                                     rng=rng, **options)
    return render_acquisition(labels, drift_px=d, field_shape=(size, size), rng=rng), d, rng


def _random_cases(seeds, n_slices, old, record, skip=()):
    """Domain-randomised acquisitions (processing/scenarios.py, 256^2): the registration the chain
    would run. ``band``: on the band find_reference_band finds on the first 10 slices (the whole
    slice when none), ``cap``: ``interface_row`` at the true cap rows (``cap_rows`` configured),
    ``whole``: the whole slice."""
    from processing.align import find_reference_band
    from processing.scenarios import random_scenario, render_scenario

    for seed in seeds:
        scenario = random_scenario(seed, n_slices=n_slices)
        if {"band", "rnd-whole"} <= set(skip) and not scenario.cap_px:
            continue  # cap mode only
        rendered = render_scenario(scenario)
        slices, d = rendered.slices, rendered.truth.drift_px
        change = rendered.scenario.magnification_change
        if change is not None:
            # the chain refuses a slice at another magnification (agent/pipeline.py): the
            # tracker never sees it, and its true shift is no translation anyway
            slices, d = slices[:change[0]], d[:change[0]]
        print(f"  seed {seed}: {rendered.scenario.describe()}" + ("" if change is None else
              f" (the {change[0]} slices before the magnification change)"))
        band = find_reference_band(slices[:10]) if "band" not in skip else None
        cap = rendered.truth.cap_px
        group = "rnd-cap" if cap else "rnd-nocap"
        if "band" not in skip:
            record(f"  rnd s{seed} band={band and band[:2]}", f"{group}-band", "new",
                   _run(DriftTracker(roi=band), slices, d))
            if old is not None:
                record(f"  rnd s{seed} band={band and band[:2]}", f"{group}-band", "old", _run(old(roi=band), slices, d))
        if "rnd-whole" not in skip:
            r = _run(DriftTracker(), slices, d)
            record(f"  rnd s{seed} whole", "rnd-whole", "new", r)
            if not cap and rendered.scenario.circle_share is None:
                _print_apparent_motion(r["shifts"] - d, rendered.truth.labels[:len(d)], d, rendered.scenario.margins_px)
        if cap >= 16 and "capmode" not in skip:
            if "capraw" not in skip:
                record(f"  rnd s{seed} cap_rows={cap}", "rnd-capmode", "new",
                       _run(DriftTracker(interface_row=cap), slices, d))
            record(f"  rnd s{seed} cap_rows={cap} chain", "rnd-capchain", "new",
                   _run(DriftTracker(interface_row=cap), _chain_feed(slices, len(scenario.phase_names)), d))


def _print_apparent_motion(error, labels, drift, margins_px):
    """Is the whole-slice wander the structure's? The apparent motion of the truth labels (no
    noise, no stage drift: they are on the canvas), registered slice to previous slice and summed,
    against the tracker's error: their per-slice steps' correlation and the mean step (px/slice)."""
    from processing.align import phase_correlate

    pad = int(np.ceil(np.abs(drift).max())) + max(margins_px) + 8  # off the unseen canvas edges
    inner = (slice(pad, -pad), slice(pad, -pad))
    steps = np.array([np.zeros(2)] + [phase_correlate(a[inner].astype(np.float32), b[inner].astype(np.float32))[0]
                                      for a, b in itertools.pairwise(labels)])
    apparent, step_error = np.cumsum(steps, axis=0), np.diff(error, axis=0)
    corr = [np.corrcoef(step_error[:, a], steps[1:, a])[0, 1] for a in range(2)]
    print(f"    structure's apparent motion (truth labels, chained): end ({apparent[-1, 0]:.1f}, "
          f"{apparent[-1, 1]:.1f}) px, mean step ({steps[1:, 0].mean():+.3f}, {steps[1:, 1].mean():+.3f}); the "
          f"tracker's error: end ({error[-1, 0]:.1f}, {error[-1, 1]:.1f}) px, mean step ({step_error[:, 0].mean():+.3f}, "
          f"{step_error[:, 1].mean():+.3f}); per-slice step correlation y {corr[0]:.2f} x {corr[1]:.2f}")


def pystack3d_stack():
    """pystack3d's synthetic stack (see the module notes) and the true shift of each saved slice."""
    from pyvsnr.vsnr2d import create_gabor
    from skimage.data import binary_blobs

    length, extra = 300, 20
    arr = binary_blobs(length=length + 2 * extra, n_dim=3, blob_size_fraction=0.07, volume_fraction=0.5,
                       rng=3).astype(float)
    arr = ndimage.gaussian_filter(arr, sigma=2, mode="mirror").clip(0, 1)
    arr = arr[extra:length + extra, extra:length + extra, extra:length + extra] * 0.5
    truth = np.zeros((length, 2))
    for k in range(20, 70):
        shift_x = 10 * (k % 20 > 10)
        arr[k] = ndimage.shift(arr[k], shift=[shift_x, 0], order=1, cval=0)
        truth[k] = (0.0, -float(shift_x))  # saved transposed: arr axis 0 is the image's x
    for sl, factor in ((slice(75, 78), 0.7), (slice(80, 85), 0.4), (slice(90, 93), 0.6), (slice(95, 100), 0.5)):
        arr[sl] *= factor
    dropped = [k for k in range(100, length) if k % 2]
    arr = np.delete(arr, dropped, axis=0)
    kept = np.array([k for k in range(length) if k not in dropped])
    z0, x0, y0 = np.linspace(0, 1, arr.shape[0]), np.linspace(0, 1, arr.shape[1]), np.linspace(0, 1, arr.shape[2])[::-1]
    z, x, y = np.meshgrid(z0, x0, y0, indexing="ij")
    bkg = x * y * z
    bkg *= 0.5 / bkg.max()
    mask = arr > 0.05
    arr[mask] += bkg[mask]
    for k in (0, 83):  # curtains_addition(seed=0, amplitude=0.5, sigma=(2, 80), angle=80, threshold=0.9999)
        np.random.seed(0)
        n0, n1 = arr[k].shape
        psi = create_gabor(n0, n1, 0.2, 2, 80, angle=80, phase=0, lambda_=0.0, xp=np).reshape(n0, n1)
        psi *= 0.01 / psi.max()
        position = (np.random.random(arr[k].shape) > 0.9999).astype(float)
        noise = np.fft.irfft2(np.fft.rfft2(position) * np.fft.rfft2(psi), s=arr[k].shape)
        arr[k] = arr[k] + noise * (0.5 * arr[k].max() / noise.max())
    arr = np.pad(arr, ((0, 0), (40, 0), (0, 0)), "constant")
    slices = (arr * 255).astype(np.uint8).transpose(0, 2, 1).copy()  # imwrite(arr[k].T)
    return slices, truth[kept], 0.01 * kept


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", default="", help="comma-separated cases to skip (cap, whole, two-phase, 2048, 1024, "
                        "random, pystack3d), groups of 'random' (band, rnd-whole, capmode, capraw: cap mode on the raw slices) "
                        "or 'old' (the old tracker)")
    parser.add_argument("--seeds", type=int, default=12, help="randomised scenarios (case 'random')")
    parser.add_argument("--only", default="", help="comma-separated seeds of 'random' (instead of --seeds)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    skip = set(args.skip.split(","))
    seeds = (0,) if args.quick else (0, 1, 2)
    old = None if "old" in skip else _old_tracker_class()
    print(f"load: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
    print(f"{'case':34s} {'who':4s} {'RMS':>7s} {'worst':>7s} {'RMS-off':>8s} {'rep/true':>7s} "
          f"{'>1px/flagged':>11s} {'unrel':>5s} {'skip':>4s} {'ms/slice':>8s}")
    summary = {}

    def record(case, group, who, r):
        _print(case, who, r)
        summary.setdefault((group, who), []).append(r)

    if "cap" not in skip:
        for seed in seeds:
            n = 100 if args.quick else 300
            acq, d, rng = _evolving(n, 256, radius_um=0.5, drift=0.6, seed=seed, jump_probability=0.0, keep_cap=True)
            slices = changing_cap(acq, 40, fiducial=True, rng=rng)
            record(f"cap+X changing grain s{seed}", "cap", "new", _run(DriftTracker(interface_row=40), slices, d))
            if old is not None:
                record(f"cap+X changing grain s{seed}", "cap", "old", _run(old(roi=(0, 40, 0, 256)), slices, d))
            if seed == seeds[0]:
                slices = changing_cap(acq, 40, fiducial=False, rng=rng)
                record(f"cap, no X, changing grain s{seed}", "cap-noX", "new",
                       _run(DriftTracker(interface_row=40), slices, d))
    if "whole" not in skip:
        settings = [(0.5, 256, 0.2), (0.5, 256, 2.0), (1.5, 512, 1.0), (3.0, 1024, 1.0)]
        for radius, size, drift in settings[:2] if args.quick else settings:
            for seed in seeds[:2]:
                n = 60 if size >= 1024 else (100 if args.quick else 200)
                acq, d, _ = _evolving(n, size, radius_um=radius, drift=drift, seed=seed)
                case = f"whole r={radius}um {size}^2 {drift}px/sl s{seed}"
                record(case, "whole", "new", _run(DriftTracker(), acq.slices, d))
                if old is not None:
                    record(case, "whole", "old", _run(old(), acq.slices, d))
    if "two-phase" not in skip:
        for seed in seeds:
            acq, d, _ = _evolving(200, 256, radius_um=0.5, drift=1.0, seed=seed,
                                  fractions={"pore": 0.0, "electrolyte": 0.55, "active": 0.45})
            record(f"two-phase 200x256^2 s{seed}", "two-phase", "new", _run(DriftTracker(), acq.slices, d))
            if old is not None:
                record(f"two-phase 200x256^2 s{seed}", "two-phase", "old", _run(old(), acq.slices, d))
    if "2048" not in skip:
        acq, d, _ = _evolving(6 if args.quick else 12, 2048, radius_um=1.0, drift=1.0, seed=0)
        record("2048^2 r=1um", "2048", "new", _run(DriftTracker(), acq.slices, d))
        if old is not None:
            record("2048^2 r=1um", "2048", "old", _run(old(), acq.slices, d))
    if "1024" not in skip:
        acq, d, _ = _evolving(20, 1024, radius_um=1.2, drift=1.2, seed=7)
        record("1024^2 r=1.2um (cost)", "1024", "new", _run(DriftTracker(), acq.slices, d))
        if old is not None:
            record("1024^2 r=1.2um (cost)", "1024", "old", _run(old(), acq.slices, d))
    if "random" not in skip:
        chosen = range(args.seeds) if not args.only else [int(v) for v in args.only.split(",")]
        _random_cases(chosen, 100 if args.quick else 200, old, record, skip)
    if "pystack3d" not in skip:
        slices, truth, z_um = pystack3d_stack()
        for who, tracker in (("new", DriftTracker()), ("old", old() if old is not None else None)):
            if tracker is None:
                continue
            r = _run(tracker, slices, truth)
            record(f"pystack3d {len(slices)} slices", "pystack3d", who, r)
            jumps = r["shifts"][np.abs(truth[:, 1]) > 0, 1]
            print(f"    {who}: found x on the 10 px jumps {jumps.mean():.2f} +- {jumps.std():.2f} px; y drift at "
                  f"the end {r['shifts'][-1, 0]:.2f} px, max |y| {np.abs(r['shifts'][:, 0]).max():.2f} px; "
                  f"z {z_um[0]:.2f}-{z_um[-1]:.2f} um, step {np.diff(z_um).min():.2f}-{np.diff(z_um).max():.2f} um "
                  f"(the tracker is indifferent to the dropped slices: it only sees one larger step)")
    print()
    print("median and worst over the cases of each group")
    for (group, who), rows in summary.items():
        rms = [r["rms"] for r in rows]
        ratio = [r["reported_ratio"] for r in rows]
        print(f"  {group:10s} {who}: RMS median {np.median(rms):.3f} worst {max(rms):.3f} px; reported/true median "
              f"{np.nanmedian(ratio):.2f} range {np.nanmin(ratio):.2f}-{np.nanmax(ratio):.2f}; wander flag right on "
              f"{100 * np.mean([r['wander_agree'] for r in rows]):.0f} % of slices; skipped "
              f"{sum(r['skipped'] for r in rows)}; ms/slice median {np.median([r['ms'] for r in rows]):.1f}")


if __name__ == "__main__":
    main()
