"""Benchmark of processing.metrics and agent.analysis (issues 7 and 13), printed side by side.

Run: ``PYTHONPATH=. python tests/benchmarks/bench_metrics.py [--only PART] [--big-shape Z Y X]``

1. ``nmc``: full Table 1 of the real NMC volume in ../shared/data (251x301x301) against the
   composition of peers on the same labels (porespy local thickness of the same phases, cc3d
   connectivity, scikit-fmm geometric tortuosity in both directions, scikit-image marching cubes
   surfaces per phase): times, speed-up (target >= 3x) and peak resident memory per voxel above
   baseline (target <= 16 B/voxel), with the values side by side.
2. ``big``: full Table 1 (every metric on the whole volume) of a 1000x1024x1024 tiled volume
   read chunk by chunk from a Zarr store: on Dask threads (2 workers), then on a LocalCluster
   (2 worker processes, ``--scheduler``): time (target <= 300 s on 2 cores), peak memory of the
   process and its workers (target <= 4 GB) and whether both give the same numbers.
3. ``taufactor``: tortuosity factor against the ``taufactor`` package (CPU) on straight channels
   and on the NMC volume's pore and carbon-binder networks: four 160x64x160 slabs along y (the
   carbon-binder barely percolates; taufactor converges on 64 slices) and the whole volume's pore
   network (target within 2 %).
4. ``incremental``: the live analysis, 16 new 1024x1024 slices at depth 100 and 800.
5. ``profile``: CPU time per voxel of each expensive part of a chunk (``--profile-slices`` x 1024 x
   1024, one thread): where the whole-volume time goes.

Volumes of part 2 and 4 are tiles of a smooth random 3-phase block (fast to generate at any size).
Print the machine load (``uptime``) beside the figures: the machine may be shared.

Measured (2026-11-30, 2-core machine). "Quiet": the other engineers' jobs paused while it ran
(load 1-2); otherwise they ran niced beside it.

==============================  ==============================  =================================
case                            session 4                       session 5
==============================  ==============================  =================================
``big`` 1000x1024^2, threads    CPU 707 s at load 8-11 (est.    **252 s wall** (quiet), CPU 466 s,
                                354 s on 2 idle cores), 1590 s  peak +2.37 GiB; 8 chunks. Before
                                wall; peak +2.60 GiB; 7 chunks  the GIL fix below: 310 s wall
                                                                (quiet), CPU 495 s
``big``, LocalCluster           same numbers: True; 1420 s      same numbers: True; 304 s wall
(2 processes)                   wall at load 9-11, +3.14 GiB    (quiet), CPU 587 s (client,
                                                                scheduler and workers), +2.69 GiB
values (both)                   tortuosity 1.11096 / 1.11031    tortuosity 1.11088 / 1.11040,
                                                                thickness electrolyte 0.06872 +-
                                                                0.00052, active 0.09469 +- 0.00078
``nmc`` table1 vs peers         7.1x CPU, 12.0 B/voxel          10.6x wall, 8.9x CPU, 11.1 B/voxel
``taufactor`` carbon-binder     160^3 crop: taufactor not       four 160x64x160 slabs along y:
                                converged in 1800 s             +0.07 / +0.07 / +0.04 / +0.03 %
                                                                (tau 139.4 / 72.1 / 61.4 / 22.3)
``taufactor`` pore              160^3 crop: 3.1025 / 3.1024     slabs +0.00 to +0.03 %; whole
                                                                volume 2.5948 / 2.5952 (-0.02 %,
                                                                142 s against 516 s)
==============================  ==============================  =================================

What changed in session 5 (values identical, except where the chunking changed):

- pair counting without a branch, four interleaved tables: 2.3x faster (36 -> 16 ns/voxel);
- the march's queue append inlined: -12 % per marched voxel;
- one multi-label distance map (edt) shared by the phases of an all-assigned chunk: 1.3x the cost
  of one phase's instead of 2x;
- an even number of chunks (8 of 125 slices instead of 7 of 143): two workers finish together;
- edt and cc3d hold the GIL (two threads running them take 2.1x the time of one): local tasks now
  give edt every CPU, so that a task in edt keeps both cores busy; 500 slices 155 -> 141 s;
- the boundary pairs of consecutive chunks are joined by a 1-D np.unique: 1.4 s -> 0.01 s per
  chunk, a serial tail of about 10 s on 8 chunks.

Thickness differences between chunkings are the row sample's (the rows fall elsewhere; the
tiled volume is periodic, 64x256x256, so a systematic row sample also aliases with it).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).absolute().parents[1]))  # tests/: the shared-data helper

from agent.analysis import VolumeAnalysis, whole_volume_table1  # noqa: E402
from processing.metrics import CHUNK_VOXELS, table1, tortuosity_factor  # noqa: E402
from processing.phases import Phases  # noqa: E402
from shared_data import shared_data  # noqa: E402

NMC = shared_data("nmc_cathode_xct_labels/nmc-1-cal_generatedCBD_bridge.tif")
NMC_VOXEL_UM = 0.398  # assumed: NREL nmc-1-cal X-ray CT (not stated in the file)
# file labels: 0 pore, 1 NMC, 2 carbon-binder (the CBD stands in for the second solid phase)
NMC_PHASES = Phases(names=("pore", "cbd", "active"), roles={"electrolyte": "cbd"})


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
    """Peak resident memory of this process and its children while the block runs (every 20 ms)."""

    def __init__(self, children=False):
        self.children = children

    def _rss(self):
        rss = self.proc.memory_info().rss
        if self.children:
            for child in self.proc.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
        return rss

    def _cpu(self):
        times = self.proc.cpu_times()
        total = times.user + times.system
        if self.children:
            for child in self.proc.children(recursive=True):
                try:
                    t = child.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        return total

    def __enter__(self):
        self.proc = psutil.Process()
        self.base = self.peak = self._rss()
        self.cpu0 = self._cpu()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc):
        self.cpu_s = self._cpu() - self.cpu0
        self._stop.set()
        self._thread.join()

    @property
    def above_base(self):
        return self.peak - self.base


def load():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def nmc_labels():
    import tifffile

    raw = tifffile.imread(NMC)
    return np.choose(raw, [1, 3, 2]).astype(np.uint8)  # pore 1, cbd 2, active 3


# ----------------------------------------------------------------------------- peers


def peer_table1(labels, spacing, phases, axis=1):
    """The same metrics by the peers the issue names, composed; returns (values, seconds per part)."""
    import cc3d
    import porespy as ps
    import skfmm
    from skimage import measure

    times, values = {}, {}
    t0 = time.perf_counter()
    for name in ("cbd", "active"):
        mask = labels == phases.label(name)
        diameter = 2 * ps.filters.local_thickness(mask, sizes=25) * spacing[0]
        values[f"thickness {name}"] = float(diameter[mask].mean())
    times["local thickness (porespy)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    active = labels == phases.label("active")
    comp = cc3d.connected_components(active, connectivity=6)
    touching = np.unique(comp[:, 0])
    sizes = np.bincount(comp.ravel())
    values["connected active"] = float(sizes[touching[touching > 0]].sum() / active.sum())
    pore = labels == phases.label("pore")
    sizes = np.bincount(cc3d.connected_components(pore, connectivity=6).ravel())[1:]
    values["interconnected pore"] = float(sizes.max() / pore.sum())
    comp = cc3d.connected_components(~active, connectivity=6)
    total, pores = np.bincount(comp.ravel()), np.bincount(comp[pore], minlength=comp.max() + 1)
    border = np.zeros(total.size, bool)
    for ax in range(3):
        for i in (0, -1):
            border[np.unique(np.take(comp, i, axis=ax))] = True
    enclosed = (pores == total) & ~border
    enclosed[0] = False
    values["inner porosity"] = float(pores[enclosed].sum() / pore.sum())
    times["connectivity (cc3d)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    mask = labels == phases.label("cbd")
    comp = cc3d.connected_components(mask, connectivity=6)
    through = np.intersect1d(np.unique(np.take(comp, 0, axis)), np.unique(np.take(comp, -1, axis)))
    through = np.isin(comp, through[through > 0])
    for key, ghost_at in (("y+", -1), ("y-", 0)):
        region = np.pad(through, [(0, 0), (1, 1), (0, 0)])
        phi = np.ones(region.shape)
        g = region.shape[1] - 1 if ghost_at == -1 else 0
        region[:, g] = through[:, ghost_at]
        phi[:, g] = -1
        dist = skfmm.distance(np.ma.MaskedArray(phi, ~region), dx=list(spacing), order=2)
        start = 1 if ghost_at == -1 else region.shape[1] - 2
        d = np.ma.getdata(dist)[:, start][through[:, start - 1]]
        values[f"tortuosity cbd {key}"] = float((d.mean() + 0.5 * spacing[1]) / (labels.shape[1] * spacing[1]))
    times["tortuosity (scikit-fmm)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name in phases.names:
        verts, faces, _, _ = measure.marching_cubes((labels == phases.label(name)).astype(np.float32), 0.5,
                                                    spacing=spacing)
        values[f"A/V_cell {name}"] = float(measure.mesh_surface_area(verts, faces) / (labels.size * np.prod(spacing)))
    times["surfaces (marching cubes)"] = time.perf_counter() - t0
    return values, times


def ours_values(doc):
    return {"thickness cbd": doc["local_thickness_um"]["cbd"]["mean"],
            "thickness active": doc["local_thickness_um"]["active"]["mean"],
            "connected active": doc["connected_share"]["active"],
            "interconnected pore": doc["interconnected_share"]["pore"],
            "inner porosity": doc["inner_porosity_share"],
            "tortuosity cbd y+": doc["tortuosity_geometric"]["cbd"]["y+"],
            "tortuosity cbd y-": doc["tortuosity_geometric"]["cbd"]["y-"],
            **{f"A/V_cell {n}": v for n, v in doc["surface_area_per_cell_volume_um-1"].items()}}


def bench_nmc(skip_peers):
    if not NMC.exists():
        print(f"== NMC volume skipped: {NMC} absent")
        return
    labels = nmc_labels()
    spacing = (NMC_VOXEL_UM,) * 3
    table1(labels[:40, :60, :60], spacing_um=spacing, phases=NMC_PHASES)  # JIT caches warm
    print(f"== NMC {labels.shape} ({labels.size / 1e6:.1f} Mvoxel), voxel {NMC_VOXEL_UM} um assumed; load: {load()}")
    with PeakRss() as mem:
        t0 = time.perf_counter()
        doc = table1(labels, spacing_um=spacing, phases=NMC_PHASES)
        ours = time.perf_counter() - t0
    print(f"revwatch table1 (whole volume, {os.cpu_count()} threads): {ours:6.1f} s (CPU {mem.cpu_s:.1f} s), peak RSS "
          f"+{mem.above_base / 2**20:.0f} MiB = {mem.above_base / labels.size:.1f} B/voxel (target <= 16)")
    if skip_peers:
        print(json.dumps(ours_values(doc), indent=1))
        return
    with PeakRss() as mem_peers:
        values, times = peer_table1(labels, spacing, NMC_PHASES)
    total = sum(times.values())
    for part, seconds in times.items():
        print(f"  peer {part:28s} {seconds:6.1f} s")
    print(f"peers composed: {total:6.1f} s (CPU {mem_peers.cpu_s:.1f} s), peak RSS +{mem_peers.above_base / 2**20:.0f} "
          f"MiB;  speed-up {total / ours:.2f}x wall, {mem_peers.cpu_s / mem.cpu_s:.2f}x CPU (target >= 3x)")
    mine = ours_values(doc)
    print(f"  {'metric':24s} {'revwatch':>10s} {'peers':>10s}")
    for key, value in values.items():
        print(f"  {key:24s} {mine[key]:10.4f} {value:10.4f}")


# ----------------------------------------------------------------------------- big volume


def bench_big(shape, chunk_voxels, tortuosity_max_voxels, cluster):
    import zarr

    print(f"== whole-volume Table 1 of {shape[0]}x{shape[1]}x{shape[2]} from Zarr (chunks of {chunk_voxels / 1e6:.0f} "
          f"Mvoxel, tortuosity budget {tortuosity_max_voxels}); load: {load()}")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        arr = zarr.create_array(Path(tmp) / "labels.zarr", shape=shape, chunks=(16, shape[1], shape[2]), dtype="uint8")
        tile = tiled((64, shape[1], shape[2]))
        for z in range(0, shape[0], 64):
            n = min(64, shape[0] - z)
            arr[z:z + n] = tile[:n]
        del tile
        kwargs = dict(spacing_um=(0.02, 0.01, 0.01), chunk_voxels=chunk_voxels,
                      tortuosity_max_voxels=tortuosity_max_voxels, details=True)
        with PeakRss() as mem:
            t0 = time.perf_counter()
            doc = whole_volume_table1(arr, workers=2, **kwargs)
            elapsed = time.perf_counter() - t0
        n = int(np.prod(shape))
        print(f"threads: {elapsed:7.1f} s wall, CPU {mem.cpu_s:.0f} s ({1e9 * mem.cpu_s / n:.0f} ns/voxel) = "
              f"{mem.cpu_s / 2:.0f} s on 2 idle cores (target <= 300 s for 1000x1024x1024), peak RSS "
              f"+{mem.above_base / 2**30:.2f} GiB "
              f"(target <= 4 GB); chunks {doc['details']['chunks']}, tortuosity on {doc['details']['tortuosity_chunks']}")
        doc.pop("details")
        print("  ", json.dumps({k: doc[k] for k in ("tortuosity_geometric", "local_thickness_um", "connected_share",
                                                    "interconnected_share", "inner_porosity_share", "sampling_error")}))
        if not cluster:
            return
        import distributed

        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                      host="127.0.0.1", memory_limit=0) as lc:
            with PeakRss(children=True) as mem:
                t0 = time.perf_counter()
                remote = whole_volume_table1(arr, scheduler=lc.scheduler_address, **kwargs)
                elapsed = time.perf_counter() - t0
        remote.pop("details")
        print(f"LocalCluster (2 processes): {elapsed:7.1f} s wall, CPU {mem.cpu_s:.0f} s = {mem.cpu_s / 2:.0f} s on 2 "
              f"idle cores (client and workers), peak RSS of client + workers "
              f"+{mem.above_base / 2**30:.2f} GiB; same numbers as threads: {remote == doc}")


# ----------------------------------------------------------------------------- taufactor


def bench_taufactor(crop, budget_s, origin=(0, 0, 0), networks=("pore", "carbon-binder")):
    import taufactor as tf

    print(f"== tortuosity factor against taufactor (CPU, conv_crit 1e-3); load: {load()}")
    cases = {}
    channels = np.zeros((40, 100, 40), bool)
    channels[5:15, :, 5:15] = True
    channels[20:35, :, 22:30] = True
    cases["straight channels 40x100x40"] = channels
    if NMC.exists():
        labels = nmc_labels()
        label_of = {"pore": 1, "carbon-binder": 2}
        if crop:
            parts = [("x".join([str(crop)] * 3) + (f" at {tuple(origin)}" if any(origin) else ""),
                      labels[tuple(slice(o, o + crop) for o in origin)], networks)]
        else:
            # the central 160 x 160 (z, x) in four consecutive slabs of 64 slices along the
            # transport axis y, which together cover it: short paths, so that taufactor's
            # solver converges on the barely percolating carbon-binder (tau 20-140) ...
            parts = [(f"y {y0}-{min(y0 + 64, labels.shape[1])}", labels[45:205, y0:y0 + 64, 70:230], networks)
                     for y0 in (0, 79, 158, 237)]
            # ... and the pore network on the whole volume as well
            parts.append(("whole 251x301x301", labels, [name for name in networks if name == "pore"]))
        for where, part, names in parts:
            for name in names:
                cases[f"NMC {name} {where}"] = np.ascontiguousarray(part == label_of[name])
    print(f"  {'case':36s} {'revwatch':>9s} {'s':>6s} {'taufactor':>10s} {'s':>6s} {'diff':>7s}")
    diffs = []
    for name, mask in cases.items():
        t0 = time.perf_counter()
        ours = tortuosity_factor(mask, axis=1, tol=1e-6)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        solver = tf.Solver(np.ascontiguousarray(np.moveaxis(mask, 1, 0)).astype(np.uint8), device="cpu")
        # solve() resumes where it stopped: run it in steps within the time budget
        limit = 0
        while not solver.converged and limit < 200_000 and time.perf_counter() - t0 < budget_s:
            limit += 500
            result = solver.solve(verbose=False, conv_crit=1e-3, iter_limit=limit)
        theirs = float(np.ravel(result)[0])
        t_theirs = time.perf_counter() - t0
        diff = ours.tau / theirs - 1 if ours.tau and theirs and np.isfinite(theirs) else float("nan")
        if np.isfinite(diff):
            diffs.append(abs(diff))
        state = f"{solver.iter} it" + ("" if solver.converged else f", NOT converged within {budget_s:.0f} s")
        print(f"  {name:36s} {ours.tau or float('nan'):9.4f} {t_ours:6.1f} {theirs:10.4f} {t_theirs:6.1f} "
              f"{100 * diff:+6.2f}%  ratio {1 + diff:.4f} (CG {ours.iterations} it, flux mismatch "
              f"{ours.flux_mismatch or 0:.1e}; taufactor {state})")
    if diffs:
        print(f"  median |diff| {100 * np.median(diffs):.2f} %, worst {100 * np.max(diffs):.2f} % (target <= 2 %)")


# ----------------------------------------------------------------------------- profile


def bench_profile(slices):
    from processing.metrics import geometric_tortuosity, local_thickness, slab_counts
    from processing.metrics._table import _components

    labels = tiled((slices, 1024, 1024))
    spacing, n = (0.02, 0.01, 0.01), labels.size
    # the row step of a whole 1000-slice volume's thickness sample, per chunk of this size
    step = max(1, int(np.ceil(np.sqrt(0.4 * n / (500_000 * slices / 1000)))))
    warm = labels[:8, :64, :64]
    local_thickness(warm == 2, spacing_um=spacing, step=2, threads=1)
    geometric_tortuosity(warm == 2, spacing_um=spacing, threads=1)
    parts = {"voxel and interface counts": lambda: slab_counts(labels, n_values=4),
             "connected share (cc3d, active)": lambda: _components(labels == 3),
             "interconnected share (cc3d, pore)": lambda: _components(labels == 1),
             "inner porosity (cc3d, not active)": lambda: _components(labels != 3),
             f"local thickness electrolyte (step {step})": lambda: local_thickness(labels == 2, spacing_um=spacing,
                                                                                  step=step, threads=1),
             f"local thickness active (step {step})": lambda: local_thickness(labels == 3, spacing_um=spacing,
                                                                             step=step, threads=1),
             "geometric tortuosity electrolyte (y+, y-)": lambda: geometric_tortuosity(labels == 2, spacing_um=spacing,
                                                                                      threads=1)}
    print(f"== CPU per voxel of the expensive parts, {labels.shape} tiled 3-phase block, 1 thread; load: {load()}")
    total = 0.0
    for name, work in parts.items():
        c0 = time.process_time()
        work()
        cpu = time.process_time() - c0
        total += cpu
        print(f"  {name:44s} {cpu:6.2f} s CPU {1e9 * cpu / n:7.1f} ns/voxel")
    print(f"  {'total':44s} {total:6.2f} s CPU {1e9 * total / n:7.1f} ns/voxel (thickness and tortuosity also run "
          "on the halo of every chunk)")


# ----------------------------------------------------------------------------- incremental


def bench_incremental():
    import zarr

    print(f"== incremental update: 16 new 1024x1024 slices (Zarr, 1 slice per chunk); load: {load()}")
    data = tiled((816, 1024, 1024))
    with tempfile.TemporaryDirectory() as tmp:
        arr = zarr.create_array(Path(tmp) / "labels.zarr", shape=data.shape, chunks=(1, 1024, 1024), dtype="uint8")
        for z in range(0, data.shape[0], 64):
            arr[z:z + 64] = data[z:z + 64]
        del data
        times = {}
        for depth in (100, 800):
            va = VolumeAnalysis(arr, spacing_um=(0.02, 0.01, 0.01), expensive_every_slices=16, halo_slices=8,
                                expensive_from_slice=depth - 24)
            va.update(depth)
            with PeakRss() as mem:
                t0 = time.perf_counter()
                doc = va.update(depth + 16)
                times[depth] = time.perf_counter() - t0
            print(f"depth {depth:4d} -> {depth + 16}: update {times[depth]:6.2f} s (peak RSS "
                  f"+{mem.above_base / 2**20:6.0f} MiB; windows {doc['expensive_windows']}; "
                  f"tortuosity {doc['tortuosity_geometric']})")
    print(f"ratio depth 800 / depth 100: {times[800] / times[100]:.2f}  (target <= 1.5)")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["nmc", "big", "taufactor", "incremental", "profile"])
    parser.add_argument("--profile-slices", type=int, default=48)
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--big-shape", type=int, nargs=3, default=(1000, 1024, 1024), metavar=("Z", "Y", "X"))
    parser.add_argument("--chunk-voxels", type=int, default=CHUNK_VOXELS)
    parser.add_argument("--tortuosity-max-voxels", type=int, default=None,
                        help="geometric tortuosity on a sample of chunks (default: every chunk)")
    parser.add_argument("--no-cluster", action="store_true", help="skip the LocalCluster run of part 2")
    parser.add_argument("--taufactor-crop", type=int, default=None,
                        help="crop the NMC volume to N^3 for part 3 (default: four 160x64x160 slabs along y)")
    parser.add_argument("--taufactor-origin", type=int, nargs=3, default=(0, 0, 0), metavar=("Z", "Y", "X"),
                        help="first voxel of the crop of part 3 (the CBD percolates along y in the 160^3 crop at "
                             "91 141 141, not at 0 0 0)")
    parser.add_argument("--taufactor-networks", nargs="+", default=["pore", "carbon-binder"],
                        choices=["pore", "carbon-binder"], help="NMC networks of part 3")
    parser.add_argument("--taufactor-budget-s", type=float, default=1800, help="time budget of one taufactor solve")
    args = parser.parse_args(argv)
    if args.only in (None, "nmc"):
        bench_nmc(args.skip_peers)
    if args.only in (None, "taufactor"):
        bench_taufactor(args.taufactor_crop, args.taufactor_budget_s, args.taufactor_origin, args.taufactor_networks)
    if args.only in (None, "big"):
        bench_big(tuple(args.big_shape), args.chunk_voxels, args.tortuosity_max_voxels, not args.no_cluster)
    if args.only in (None, "incremental"):
        bench_incremental()
    if args.only in (None, "profile"):
        bench_profile(args.profile_slices)


if __name__ == "__main__":
    sys.exit(main())
