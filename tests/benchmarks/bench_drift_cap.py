"""Drift accuracy and speed: registration on the protective cap band vs on the whole slice.

Renders a seeded acquisition with the default artefacts of issue 3 (noise 16, blur 1, curtaining,
brightness drift, drift 1.2 px per slice with jumps), an evolving microstructure and a cap of 40
rows (vertical drift kept upward so the cap stays in view), then prints, for the tracker with
``roi`` on the cap, in cap mode (``interface_row``, what the chain uses with ``cap_rows``), with the band
found by :func:`find_reference_band` and without ROI: the RMS
error of the applied shift, the end-to-end error and the median time per ``update``.

Run::

    PYTHONPATH=. python tests/benchmarks/bench_drift_cap.py            # 300 slices of 512^2
    PYTHONPATH=. python tests/benchmarks/bench_drift_cap.py --quick    # 60 slices of 256^2
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from processing.align import DriftTracker, find_reference_band
from processing.synthetic import generate_microstructure, render_acquisition, simulate_drift

CAP_PX = 40


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--slices", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()
    n = args.slices or (60 if args.quick else 300)
    size = args.size or (256 if args.quick else 512)
    rng = np.random.default_rng(args.seed)
    d = simulate_drift(n, jump_probability=0.01, rng=rng)
    d[:, 0] = -np.abs(d[:, 0])
    margin = int(np.ceil(np.abs(d).max())) + 12
    t = time.perf_counter()
    labels = generate_microstructure((n, size + 2 * margin, size + 2 * margin), particle_radius_um=0.5, rng=rng)
    acq = render_acquisition(labels, drift_px=d, field_shape=(size, size), cap_px=CAP_PX, rng=rng)
    print(f"{n} slices of {size}^2, cap {CAP_PX} rows, generated in {time.perf_counter() - t:.0f} s; "
          f"max |drift| {np.abs(d).max(axis=0).round(1)} px")
    band = find_reference_band(acq.slices[:12])
    print(f"find_reference_band(first 12 slices) -> {band}")
    cases = (("roi on the cap", {"roi": (0, CAP_PX, 0, size)}), ("cap mode", {"interface_row": CAP_PX}),
             ("found band", {"roi": band}), ("whole slice", {"roi": None}))
    for name, options in cases:
        roi = options.get("roi")
        tracker = DriftTracker(**options)
        times, shifts = [], []
        for pixels in acq.slices:
            t = time.perf_counter()
            shifts.append(tracker.update(pixels).shift_px)
            times.append(time.perf_counter() - t)
        error = np.array(shifts) - acq.drift_px
        rms = float(np.sqrt((error**2).sum(axis=1).mean()))
        print(f"{name:15s} roi={roi!s:22s} RMS {rms:6.3f} px  end {np.hypot(*error[-1]):6.3f} px  "
              f"max {np.abs(error).max():6.2f} px  {1e3 * np.median(times[1:]):6.1f} ms/update")


if __name__ == "__main__":
    main()
