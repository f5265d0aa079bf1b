"""Benchmark of processing.metrics and agent.analysis (issue 7), printed side by side.

Run: ``PYTHONPATH=. python tests/benchmarks/bench_metrics.py [--big] [--skip-porespy] [--only PART]``

1. Incremental update of 16 new 1024x1024 slices at depth 100 and 800 (Zarr on disk,
   one slice per chunk), with the peak resident memory of the analysis above baseline.
2. Local thickness against ``porespy.filters.local_thickness`` on the same 256^3 phase.
3. Full Table 1 (``processing.metrics.table1``) of 64x1024x1024 (expensive metrics on the
   whole volume, then on a 16 Mvoxel block) and, with ``--big``, 512x1024x1024 (block).
4. Table 1 of the real NMC volume in ../shared/data (if present).

Volumes are tiles of a smooth random 3-phase block (fast to generate at any size).
"""

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).absolute().parents[1]))  # tests/: the shared-data helper

from agent.analysis import VolumeAnalysis  # noqa: E402
from processing.metrics import local_thickness, local_thickness_summary, table1  # noqa: E402
from processing.phases import Phases  # noqa: E402
from shared_data import shared_data  # noqa: E402

NMC = shared_data("nmc_cathode_xct_labels/nmc-1-cal_generatedCBD_bridge.tif")
NMC_VOXEL_UM = 0.398  # assumed: NREL nmc-1-cal X-ray CT (not stated in the file)


def block(shape, seed=0, sigma=3.0):
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    b = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma)
    labels = np.full(shape, 2, np.uint8)
    labels[a > np.quantile(a, 0.55)] = 3
    labels[(labels == 2) & (b > np.quantile(b, 0.6))] = 1
    return labels


def tiled(shape, tile=(64, 256, 256)):
    reps = [-(-s // t) for s, t in zip(shape, tile)]
    out = np.tile(block(tile), reps)
    return np.ascontiguousarray(out[: shape[0], : shape[1], : shape[2]])


class PeakRss:
    """Peak resident memory of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def above_base_mb(self):
        return (self.peak - self.base) / 2**20


def bench_incremental():
    import zarr

    print("== incremental update: 16 new 1024x1024 slices (Zarr, 1 slice per chunk)")
    data = tiled((816, 1024, 1024))
    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.create_array(Path(tmp) / "labels.zarr", shape=data.shape, chunks=(1, 1024, 1024), dtype="uint8")
        for z in range(0, data.shape[0], 64):
            arr[z:z + 64] = data[z:z + 64]
        del data
        times = {}
        for depth in (100, 800):
            # one 16-slice expensive window per update, as in a run with expensive_every_slices=16
            va = VolumeAnalysis(arr, spacing_um=(0.02, 0.01, 0.01), expensive_every_slices=16, halo_slices=8,
                                expensive_from_slice=depth - 24)
            t0 = time.perf_counter()
            va.update(depth)
            prime = time.perf_counter() - t0
            with PeakRss() as mem:
                t0 = time.perf_counter()
                doc = va.update(depth + 16)
                times[depth] = time.perf_counter() - t0
            print(f"depth {depth:4d} -> {depth + 16}: update {times[depth]:6.2f} s  (catch-up to {depth}: "
                  f"{prime:5.1f} s; peak RSS +{mem.above_base_mb:6.0f} MiB above {mem.base / 2**20:.0f} MiB; "
                  f"expensive windows {doc['expensive_windows']}; tortuosity {doc['tortuosity_geometric']})")
    print(f"ratio depth 800 / depth 100: {times[800] / times[100]:.2f}  (target <= 1.5)")


def bench_local_thickness(skip_porespy):
    print("== local thickness, 256^3 phase (40 %), isotropic")
    rng = np.random.default_rng(0)
    field = ndimage.gaussian_filter(rng.standard_normal((256, 256, 256), dtype=np.float32), 6)
    mask = field > np.quantile(field, 0.6)
    local_thickness_summary(mask[:32, :32, :32], spacing_um=(1, 1, 1))  # JIT cache warm-up
    t0 = time.perf_counter()
    summary = local_thickness_summary(mask, spacing_um=(1, 1, 1))
    t_summary = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = local_thickness(mask, spacing_um=(1, 1, 1))
    t_full = time.perf_counter() - t0
    print(f"revwatch summary (step {summary['step']}): {t_summary:6.2f} s  mean {summary['mean']:.3f} "
          f"std {summary['std']:.3f} voxels")
    print(f"revwatch full map          : {t_full:6.2f} s  mean {full[mask].mean():.3f} std {full[mask].std():.3f}")
    if skip_porespy:
        return
    import porespy as ps

    t0 = time.perf_counter()
    radius = ps.filters.local_thickness(mask)
    t_ps = time.perf_counter() - t0
    diam = 2 * radius[mask]
    print(f"porespy 2*radius           : {t_ps:6.2f} s  mean {diam.mean():.3f} std {diam.std():.3f}")
    print(f"speed-up summary {t_ps / t_summary:.1f}x, full map {t_ps / t_full:.1f}x (target >= 5x); "
          f"mean difference {100 * (summary['mean'] / diam.mean() - 1):+.2f} % (target within 3 %)")


def bench_table1(runs):
    for shape, max_voxels in runs:
        labels = tiled(shape)
        with PeakRss() as mem:
            t0 = time.perf_counter()
            doc = table1(labels, spacing_um=(0.02, 0.01, 0.01), expensive_max_voxels=max_voxels)
            elapsed = time.perf_counter() - t0
        bound = "whole volume" if max_voxels is None else f"expensive metrics on {max_voxels / 1e6:.0f} Mvoxel block"
        print(f"== table1 {shape[0]}x{shape[1]}x{shape[2]} ({bound}): {elapsed:6.1f} s on {os.cpu_count()} cores, "
              f"peak RSS +{mem.above_base_mb:.0f} MiB  (target for 512x1024x1024: < 60 s)")
        print("   tortuosity", doc["tortuosity_geometric"], "thickness", doc["local_thickness_um"])


def bench_nmc():
    if not NMC.exists():
        print(f"== NMC volume skipped: {NMC} absent")
        return
    import tifffile

    raw = tifffile.imread(NMC)
    # file labels: 0 pore, 1 NMC, 2 carbon-binder (stands in for the second solid phase)
    labels = np.choose(raw, [1, 3, 2]).astype(np.uint8)
    phases = Phases(names=("pore", "electrolyte", "active"))
    t0 = time.perf_counter()
    doc = table1(labels, spacing_um=(NMC_VOXEL_UM,) * 3, phases=phases, details=True)
    elapsed = time.perf_counter() - t0
    doc["details"].pop("local_thickness_histogram")
    print(f"== NMC {raw.shape} (voxel {NMC_VOXEL_UM} um assumed; CBD as 'electrolyte'), {elapsed:.1f} s")
    print(json.dumps(doc, indent=1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", action="store_true", help="also time Table 1 of 512x1024x1024 (bounded block)")
    parser.add_argument("--skip-porespy", action="store_true")
    parser.add_argument("--only", choices=["incremental", "thickness", "table1", "nmc"])
    args = parser.parse_args(argv)
    if args.only in (None, "incremental"):
        bench_incremental()
    if args.only in (None, "thickness"):
        bench_local_thickness(args.skip_porespy)
    if args.only in (None, "table1"):
        runs = [((64, 1024, 1024), None), ((64, 1024, 1024), 16_000_000)]
        if args.big:
            # the whole-volume expensive metrics of 512 slices take ~8x the 64-slice run
            runs += [((512, 1024, 1024), 16_000_000)]
        bench_table1(runs)
    if args.only in (None, "nmc"):
        bench_nmc()


if __name__ == "__main__":
    sys.exit(main())
