"""Speed of the synthetic acquisition generator and of slice reading/writing.

Prints seconds per volume for :func:`generate_microstructure` and
:func:`render_acquisition`, and milliseconds per slice for
:func:`write_slice` / :func:`read_slice` (FEI layout) at the sizes of
issue 3 (1024 x 1024 8-bit, 2048 x 2048 16-bit), next to a plain
``tifffile.imread`` of the same file (the floor any reader pays).

Run::

    PYTHONPATH=. python tests/benchmarks/bench_synthetic.py           # full sizes
    PYTHONPATH=. python tests/benchmarks/bench_synthetic.py --quick   # small sizes
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from processing.io import read_slice, write_slice
from processing.synthetic import generate_microstructure, render_acquisition


def timed(fn, repeat=1):
    """Best wall time (s) of `repeat` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes only")
    args = parser.parse_args()

    volumes = [((64, 256, 256), 0.6), ((64, 256, 256), 0.2)]
    if not args.quick:
        volumes += [((300, 512, 512), 0.6), ((300, 512, 512), 0.2)]
    print("generate_microstructure")
    labels = None
    for shape, radius in volumes:
        seconds, labels = timed(lambda: generate_microstructure(shape, particle_radius_um=radius, rng=0))
        fractions = [float((labels == k).mean()) for k in (1, 2, 3)]
        print(f"  {shape} radius {radius} um: {seconds:6.2f} s  fractions {np.round(fractions, 4).tolist()}")

    print("render_acquisition (default artefacts)")
    seconds, acq = timed(lambda: render_acquisition(labels, field_shape=(labels.shape[1] - 160,) * 2,
                                                    drift_px_per_slice=0.5, jump_probability=0.0, rng=0))
    n = acq.slices.shape[0]
    print(f"  {acq.slices.shape}: {seconds:6.2f} s  ({1e3 * seconds / n:.1f} ms/slice)")

    print("slice files (FEI layout), ms per slice: write / read_slice / tifffile.imread")
    rng = np.random.default_rng(0)
    sizes = [((1024, 1024), np.uint8)] + ([] if args.quick else [((2048, 2048), np.uint16)])
    with tempfile.TemporaryDirectory() as tmp:
        for shape, dtype in sizes:
            pixels = rng.integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
            t_write, path = timed(lambda: write_slice(Path(tmp), 1, pixels, layout="fei", pixel_size_um=0.02), 5)
            t_read, _ = timed(lambda: read_slice(path), 10)
            t_floor, _ = timed(lambda: tifffile.imread(path), 10)
            print(f"  {shape} {np.dtype(dtype).name}: {1e3 * t_write:6.1f} / {1e3 * t_read:6.1f} / "
                  f"{1e3 * t_floor:6.1f}  (read_slice / imread = {t_read / t_floor:.2f})")


if __name__ == "__main__":
    main()
