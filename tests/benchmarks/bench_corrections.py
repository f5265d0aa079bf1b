"""Curtaining removal and slice flagging, before/after, on three kinds of slices.

1. The project's generator: clean slices (no curtains), straight curtains, tilted curtains
   (added at +-5 and +-10 degrees from vertical); the stripe amplitude of the error against the
   noise-free rendering, before and after, per slice.
2. Real slices (``../shared/data/samba_real_slices``): the stripe amplitude of the whole slice
   (phase-aware) and, in every labelled single-phase rectangle, of its column means; the shift of
   each rectangle's median grey level.
3. pystack3d's synthetic stack (the recipe of its ``examples/ex_synthetic_stack.py``: blurred
   3-D blobs, x*y*z background, slices 75-99 dimmed to 0.4-0.7x, Gabor curtains tilted 10
   degrees on slices 0 and 83 from ``pyvsnr.utils.curtains_addition``): the stripe energy along
   the curtain direction of every slice, before and after, the error against the clean stack,
   and whether the dimmed slices are flagged by :class:`processing.chain.SliceChain`.
4. Brightness: a long run with a slow +-30 % gain drift, with and without three slices at 0.4x,
   through :class:`processing.chain.SliceChain`: label accuracy and the flagged slices.

Only the curtaining step runs in parts 1 and 2 (no brightness map), so before/after differ by
it alone. Run from the repository root::

    PYTHONPATH=$PWD python tests/benchmarks/bench_corrections.py [--quick] [--curtain-reference neighbours|auto]

``--compare-with CHECKOUT`` also runs the curtaining of another checkout's
``processing/correct.py`` (e.g. the main branch) on the same slices, as a third column.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

import processing.correct
from processing.correct import fit_correction, stripe_amplitude
from processing.synthetic import generate_microstructure, render_acquisition

VARIANTS = {"this": processing.correct}  # name: a module with fit_correction (see --compare-with)
OPTIONS = {}  # keyword options of every fit_correction of parts 1-3 (see --curtain-reference)
SAMBA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "samba_real_slices"


def _row(name, values, fmt="{:.2f}"):
    v = np.asarray(values, dtype=float)
    return f"{name:<44} " + "  ".join(fmt.format(x) for x in (np.median(v), v.max(), v.min()))


def tilted_stripes(shape, angle_deg, amplitude, rng):
    """Stripes of ~2 px correlation, `amplitude` grey levels rms, at `angle_deg` from vertical."""
    h, w = shape
    pad = int(np.ceil(h * abs(np.tan(np.radians(angle_deg))))) + 2
    profile = ndimage.gaussian_filter1d(rng.standard_normal(w + 2 * pad), 2.0)
    profile *= amplitude / profile.std()
    yy, xx = np.mgrid[0:h, 0:w]
    return profile[np.rint(xx - (yy - (h - 1) / 2) * np.tan(np.radians(angle_deg))).astype(int) + pad]


def generator_cases(quick):
    size, n = (256, 2) if quick else (384, 3)
    cases = []
    for seed in range(2 if quick else 4):
        labels = generate_microstructure((n, size + 24, size + 24), particle_radius_um=(0.3, 0.5, 0.8, 0.6)[seed],
                                         rng=seed)
        zero = np.zeros((n, 2))
        kw = dict(drift_px=zero, field_shape=(size, size), rng=seed, brightness_drift=0.0)
        clean = render_acquisition(labels, noise_sigma=0, curtaining=0, **kw)
        noisy = render_acquisition(labels, curtaining=0, noise_sigma=(8, 16, 24, 16)[seed], **kw)
        straight = render_acquisition(labels, curtaining=(0.1, 0.15, 0.1, 0.2)[seed], noise_sigma=16, **kw)
        rng = np.random.default_rng(seed)
        cases.append(("clean", 0.0, noisy.slices, clean.slices))
        cases.append(("straight", 0.0, straight.slices, clean.slices))
        for angle in (10.0, -5.0) if seed % 2 else (-10.0, 5.0):
            tilted = np.clip(noisy.slices + tilted_stripes((size, size), angle, 10.0, rng), 0, 255).astype(np.uint8)
            cases.append((f"tilted {abs(angle):.0f} deg", angle, tilted, clean.slices))
    return cases


def bench_generator(quick):
    print("\n1. generator: stripe amplitude of (slice - noise-free slice), grey levels, per slice")
    print(f"{'case':<44} {'median':>6} {'worst':>6} {'best':>6}")
    by_case = {}
    for name, angle, raw, clean in generator_cases(quick):
        key = name.split(" deg")[0].rstrip("0123456789 ")
        for variant, module in VARIANTS.items():
            model = module.fit_correction(raw[:1], n_phases=3, brightness=False, **OPTIONS)
            for k in range(len(raw)):
                out = model.apply(raw[k]).pixels
                before = stripe_amplitude(raw[k].astype(np.float32) - clean[k], angle_deg=angle)
                after = stripe_amplitude(out - clean[k], angle_deg=angle)
                by_case.setdefault((key, variant), []).append((before, after))
    for (name, variant), pairs in by_case.items():
        before, after = np.array(pairs).T
        if variant == "this":
            print(_row(f"{name}: input", before))
        print(_row(f"{name}: after ({variant})", after))
        ratio = after / before
        label = f"{name}: after / input ({variant})"
        print(f"{label:<44} {np.median(ratio):6.2f} {ratio.max():6.2f} {ratio.min():6.2f}")


def read_regions(path):
    """{class id: [(x, y, w, h), ...]} from a SAMBA region file."""
    lines = [s.strip() for s in Path(path).read_text().splitlines() if s.strip() and not s.startswith("#")]
    regions, i = {}, 0
    while i + 5 < len(lines) + 1 and i + 4 < len(lines):
        x, y, w, h, cls = (int(v) for v in lines[i:i + 5])
        regions.setdefault(cls, []).append((x, y, w, h))
        i += 6  # five numbers and "NL"
    return regions


def region_figures(image, regions):
    """Per rectangle: rms of its high-passed column means (over 8 px) and its median grey."""
    out = []
    for cls, boxes in regions.items():
        for x, y, w, h in boxes:
            box = np.asarray(image, dtype=np.float32)[y:y + h, x:x + w]
            cols = box.mean(axis=0)
            stripes = cols - ndimage.gaussian_filter1d(cols, 8.0, mode="nearest")
            out.append((cls, float(np.sqrt(np.mean(stripes ** 2))), float(np.median(box))))
    return out


def bench_samba():
    import tifffile

    print("\n2. real slices (samba_real_slices): stripe amplitude (grey levels) and region medians")
    if not SAMBA.is_dir():
        print(f"   skipped: {SAMBA} not found")
        return
    for name, n_phases in (("2_phase", 2), ("3_phase", 3)):
        image = tifffile.imread(SAMBA / f"{name}.tif")
        image = image if image.ndim == 2 else image[..., 0]
        regions = read_regions(SAMBA / f"{name}_roi_config.txt")
        whole_before = stripe_amplitude(image, levels=fit_correction([image], n_phases=n_phases, **OPTIONS).levels)
        before = region_figures(image, regions)
        amp_b = [b[1] for b in before]
        print(f"   {name} input: whole slice {whole_before:.2f}; regions (median/worst of {len(amp_b)}) "
              f"{np.median(amp_b):.2f}/{max(amp_b):.2f}")
        for variant, module in VARIANTS.items():
            model = module.fit_correction([image], n_phases=n_phases, brightness=False, **OPTIONS)
            t0 = time.perf_counter()
            out = model.apply(image).pixels
            ms = 1e3 * (time.perf_counter() - t0)
            after = region_figures(out, regions)
            shift = max(abs(b[2] - a[2]) for a, b in zip(before, after))
            amp_a = [a[1] for a in after]
            print(f"   {name} after ({variant}): whole slice {stripe_amplitude(out, levels=model.levels):.2f}; regions "
                  f"{np.median(amp_a):.2f}/{max(amp_a):.2f}; worst region ratio "
                  f"{max(a / b for a, b in zip(amp_a, amp_b)):.2f}; largest change of a region median {shift:.2f} "
                  f"grey; {ms:.0f} ms")


def pystack3d_stack(length=300):
    """The defects of pystack3d's synthetic example, rebuilt from its stated recipe (uint8, (Z, Y, X))."""
    from pyvsnr.utils import curtains_addition
    from skimage.data import binary_blobs

    band = 20
    arr = binary_blobs(length=length + 2 * band, n_dim=3, blob_size_fraction=0.07, volume_fraction=0.5,
                       rng=3).astype(float)
    arr = ndimage.gaussian_filter(arr, 2, mode="mirror").clip(0, 1)[band:-band, band:-band, band:-band] * 0.5
    target = arr.copy()
    dimmed = {75: 0.7, 76: 0.7, 77: 0.7, **dict.fromkeys(range(80, 85), 0.4), **dict.fromkeys(range(90, 93), 0.6),
              **dict.fromkeys(range(95, 100), 0.5)}
    for k, factor in dimmed.items():
        arr[k] *= factor
    z, x, y = np.meshgrid(*(np.linspace(0, 1, s) for s in arr.shape), indexing="ij")
    bkg = x * y[:, :, ::-1] * z
    mask = arr > 0.05
    arr[mask] += (bkg * 0.5 / bkg.max())[mask]
    curtained = (0, 83)
    for k in curtained:
        arr[k] = curtains_addition(arr[k], seed=0, amplitude=0.5, sigma=(2, 80), angle=80, threshold=0.9999, norm=False)
    # the example writes slice k transposed
    to8 = lambda a: np.swapaxes((a * 255).astype(np.uint8), 1, 2)  # noqa: E731
    return to8(arr), to8(target), curtained, sorted(dimmed)


def directional_energy(image, angle_deg, width_deg=0.5, k_range=(1 / 64, 0.25)):
    """Spectral power of the mean-free, Hann-windowed slice within +-`width_deg` of the line of
    stripes at `angle_deg` (ky = -kx tan(angle)), spatial frequencies in `k_range` (cycles/px)."""
    a = np.asarray(image, dtype=float)
    a = (a - a.mean()) * np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    power = np.abs(np.fft.rfft2(a)) ** 2
    ky = np.fft.fftfreq(a.shape[0])[:, None]
    kx = np.fft.rfftfreq(a.shape[1])[None, :]
    k = np.hypot(ky, kx)
    direction = np.degrees(np.arctan2(-ky, kx))  # angle of the stripe whose line this is
    sel = (np.abs(direction - angle_deg) <= width_deg) & (k >= k_range[0]) & (k <= k_range[1])
    return float(power[sel].sum())


def bench_pystack3d(quick):
    from processing.chain import SliceChain
    from processing.correct import stripe_angle
    from processing.io import SliceImage
    from processing.phases import Phases

    print("\n3. pystack3d synthetic stack (curtains on slices 0 and 83, slices 75-99 dimmed)")
    try:
        stack, target, curtained, dimmed = pystack3d_stack(200 if quick else 300)
    except ImportError as exc:
        print(f"   skipped: {exc}")
        return
    angle = stripe_angle(stack[curtained[0]], levels=fit_correction(target[:3], n_phases=2, **OPTIONS).levels)
    print(f"   curtain angle found on slice 0: {angle:.2f} deg from vertical")
    for variant, module in VARIANTS.items():
        model = module.fit_correction(target[:3], n_phases=2, **OPTIONS)  # slice 83 is also dimmed: brightness map on
        ratios = []
        for k in range(len(stack)):
            corrected = model.apply(stack[k])
            out = corrected.pixels
            mapped = corrected.gain * stack[k].astype(np.float32) + corrected.offset  # before curtaining removal
            e0, e1 = (directional_energy(a, angle) for a in (mapped, out))
            ratios.append(e1 / e0)
            if k in curtained:
                errors = (stripe_amplitude(mapped - target[k], angle_deg=angle),
                          stripe_amplitude(out - target[k], angle_deg=angle))
                print(f"   ({variant}) slice {k}: stripe energy along {angle:.1f} deg x{e1 / e0:.3f}; error stripe "
                      f"amplitude {errors[0]:.2f} -> {errors[1]:.2f} grey")
        clean = np.delete(np.array(ratios), curtained)
        print(f"   ({variant}) slices without curtains: stripe energy after/before median {np.median(clean):.4f}, "
              f"largest {clean.max():.4f}")
    chain = SliceChain(phases=Phases(("pore", "active")), calibration_slices=4, roi=None, **OPTIONS)
    done = []
    for k, pixels in enumerate(stack):
        done += chain.push(SliceImage(pixels, k, f"slice_{k:04d}.tif", (0.01, 0.01), None))
    done += chain.flush()
    flagged = {p.index for p in done if p.flag}
    print(f"   dimmed slices flagged: {len(flagged & set(dimmed))} of {len(dimmed)}; other slices flagged: "
          f"{sorted(flagged - set(dimmed))}")
    for p in done:
        if p.flag and p.index not in dimmed:
            print(f"      slice {p.index} {p.flag}: {p.flag_reason}")


def bench_brightness(quick):
    from processing.chain import SliceChain
    from processing.io import SliceImage
    from processing.phases import Phases

    n = 300 if quick else 1000
    print(f"\n4. brightness: {n} slices of 96 x 96 px, gain 1 + 0.3 sin (+-30 %), with or without three slices at 0.4x")
    labels = generate_microstructure((60, 120, 120), spacing_um=(0.05, 0.02, 0.02), particle_radius_um=0.4, rng=7)
    acq = render_acquisition(labels, field_shape=(96, 96), drift_px=np.zeros((60, 2)), rng=7, brightness_drift=0.0,
                             levels=(35, 90, 150), curtaining=0.05)
    index = np.resize(np.r_[np.arange(60), np.arange(58, 0, -1)], n)  # ping-pong: neighbours stay neighbours
    drops = (n * 3 // 10, n * 3 // 10 + 1, n * 7 // 10)
    drift = 1 + 0.3 * np.sin(np.linspace(0, 3 * np.pi, n))
    for name, gain, dropped in (("steady", np.ones(n), ()), ("drift", drift, ()), ("drift + drops", drift, drops)):
        rng = np.random.default_rng(4)
        chain = SliceChain(phases=Phases(), calibration_slices=4, roi=(0, 1 << 20, 0, 1 << 20))
        done = []
        for k, (i, g) in enumerate(zip(index, gain)):
            g = g * (0.4 if k in dropped else 1.0)
            pixels = np.clip(np.rint(acq.slices[i] * g + rng.normal(0, 2.0, (96, 96))), 0, 255).astype(np.uint8)
            done += chain.push(SliceImage(pixels, k, f"s{k}.tif", (0.02, 0.02), None))
        done += chain.flush()
        right = total = 0
        for p in done:  # each slice at the shift the chain applied: alignment errors do not count
            t = ndimage.shift(acq.labels[index[p.index]], p.drift.shift_px, order=0)
            m = p.labels > 0
            right += int(np.count_nonzero(p.labels[m] == t[m]))
            total += int(np.count_nonzero(m))
        good = [p.uncertain_share for p in done if p.flag is None]
        flagged = [p for p in done if p.flag]
        print(f"   {name:<14} accuracy {100 * right / total:.2f} %; uncertain share of good slices median "
              f"{np.median(good):.4f}; flagged {[(p.index, p.flag) for p in flagged]} (injected {list(dropped)}), "
              f"their uncertain share {[round(p.uncertain_share, 4) for p in flagged]}, quality "
              f"{[round(p.quality, 3) for p in flagged]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer and smaller cases")
    parser.add_argument("--compare-with", type=Path, help="another checkout whose processing/correct.py is compared")
    parser.add_argument("--curtain-reference", choices=("phases", "neighbours", "auto"), default=None,
                        help="curtain_reference of every fit in parts 1-3 (default: fit_correction's)")
    args = parser.parse_args(argv)
    if args.curtain_reference is not None:
        OPTIONS["curtain_reference"] = args.curtain_reference
    if args.compare_with is not None:
        import importlib.util

        spec = importlib.util.spec_from_file_location("other_correct", args.compare_with / "processing" / "correct.py")
        VARIANTS[args.compare_with.name or str(args.compare_with)] = module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up
        spec.loader.exec_module(module)
    logging.basicConfig(level=logging.ERROR)
    import os

    print(f"load average {os.getloadavg()[0]:.2f}")
    bench_generator(args.quick)
    bench_samba()
    bench_pystack3d(args.quick)
    bench_brightness(args.quick)


if __name__ == "__main__":
    sys.exit(main())
