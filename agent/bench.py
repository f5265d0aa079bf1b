"""Per-slice throughput of the slice path (read, correct, align, segment, append) on this machine.

:func:`run_slice_bench` renders a synthetic acquisition with known drift and labels, writes it as
FEI TIFFs, then times every stage slice by slice through the agent's own objects: ``read_slice``, the
:class:`processing.chain.SliceChain` (correct, align, segment; its per-stage timings) and
:class:`agent.store.VolumeStore` for the append. In the same run it times the usual alignment tools on the same slices (pystackreg TRANSLATION against the
previous slice, scikit-image ``phase_cross_correlation`` at full resolution with upsampling 20)
and reports the drift error of each method against the truth. ``revwatch bench`` calls
:func:`main`.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from agent.store import VolumeStore
from processing.chain import SliceChain
from processing.io import read_slice, write_slice
from processing.phases import Phases
from processing.synthetic import generate_microstructure, render_acquisition, simulate_drift

__all__ = ["STAGES", "run_slice_bench", "format_report", "main"]

logger = logging.getLogger(__name__)

STAGES = ("read", "correct", "align", "segment", "append")


def _rms(error):
    error = np.asarray(error, dtype=float)
    return float(np.sqrt((error**2).sum(axis=1).mean()))


def _acquisition(shape, dtype, n_slices, rng):
    rng = np.random.default_rng(rng)
    drift = simulate_drift(n_slices, drift_px_per_slice=1.2, jump_probability=0.02, jump_px=15.0, rng=rng)
    margin = int(np.ceil(np.abs(drift).max())) + 12
    labels = generate_microstructure((n_slices, shape[0] + 2 * margin, shape[1] + 2 * margin), rng=rng)
    return render_acquisition(labels, drift_px=drift, field_shape=shape, dtype=dtype, rng=rng)


def _peer_drifts(slices, stages_ms):
    """Cumulative drift from pystackreg and skimage (previous-slice registration), timed."""
    from skimage.registration import phase_cross_correlation

    out = {}
    frames = [np.asarray(s, dtype=np.float32) for s in slices]
    t0 = time.perf_counter()
    steps = [phase_cross_correlation(frames[k - 1], frames[k], upsample_factor=20)[0] for k in range(1, len(frames))]
    stages_ms["skimage_phase_cross_correlation"] = 1e3 * (time.perf_counter() - t0) / max(len(frames) - 1, 1)
    out["skimage_phase_cross_correlation"] = np.cumsum([np.zeros(2)] + steps, axis=0)
    try:
        from pystackreg import StackReg
    except ImportError:
        logger.warning("pystackreg is not installed: skipping it")
        return out
    reg = StackReg(StackReg.TRANSLATION)
    t0 = time.perf_counter()
    steps = []
    for k in range(1, len(frames)):
        tmat = reg.register(frames[k - 1], frames[k])
        steps.append((-tmat[1, 2], -tmat[0, 2]))  # tmat maps reference -> moving: invert
    stages_ms["pystackreg_translation"] = 1e3 * (time.perf_counter() - t0) / max(len(frames) - 1, 1)
    out["pystackreg_translation"] = np.cumsum([np.zeros(2)] + steps, axis=0)
    return out


def run_slice_bench(shape=(1024, 1024), dtype=np.uint8, n_slices=20, *, calibration_slices=3, peers=True,
                    workdir=None, rng=0):
    """Time the slice path on a synthetic acquisition.

    Parameters
    ----------
    shape : (int, int)
        Slice shape (Y, X) in pixels.
    dtype : numpy dtype
        uint8 or uint16.
    n_slices : int
        Number of slices timed (>= calibration_slices + 2).
    calibration_slices : int, optional
        Slices used to calibrate the corrections and the phase model (not timed, as in a run).
    peers : bool, optional
        Also time pystackreg and scikit-image registration on the same slices.
    workdir : path, optional
        Where the TIFFs and the Zarr go (a temporary folder by default, removed afterwards).
    rng : None, int or numpy.random.Generator, optional

    Returns
    -------
    dict
        ``shape``, ``dtype``, ``n_slices``, ``ms_per_stage`` {stage: mean wall ms},
        ``cpu_ms_per_stage`` {read, chain, append: mean CPU ms of this process, all threads},
        ``ms_per_slice``,
        ``cpu_ms_per_slice``, ``slices_per_s`` (wall), ``load_average`` (1, 5, 15 min: other
        processes inflate wall times on a shared machine), ``drift_rms_px`` {method: px}, ``drift_end_px`` {method: px},
        ``align_ms`` {method: ms per slice}, ``align_speedup`` {peer: ratio of its time to ours},
        ``label_accuracy``, ``fraction_error_pp`` {label: pp}, ``rss_mb`` (start, end).
    """
    import psutil

    shape = tuple(int(v) for v in shape)
    dtype = np.dtype(dtype)
    if n_slices < calibration_slices + 2:
        raise ValueError(f"n_slices: expected >= {calibration_slices + 2}, got {n_slices!r}")
    acq = _acquisition(shape, dtype, n_slices, rng)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp) / "slices"
        folder.mkdir()
        paths = [write_slice(folder, k + 1, s, layout="fei", pixel_size_um=0.02) for k, s in enumerate(acq.slices)]
        process = psutil.Process()
        rss_start = process.memory_info().rss / 2**20

        chain = SliceChain(phases=Phases(), calibration_slices=calibration_slices, roi=None)
        store = VolumeStore.create(Path(tmp) / "volume.ome.zarr", canvas_shape=shape, dtype=dtype,
                                   spacing_um=(0.02, 0.02, 0.02))
        times = {stage: [] for stage in STAGES}
        cpu = {"read": [], "chain": [], "append": []}
        shifts = []
        for path in paths:
            t0, c0 = time.perf_counter(), time.process_time()
            image = read_slice(path)
            t1, c1 = time.perf_counter(), time.process_time()
            done = chain.push(image)
            t2, c2 = time.perf_counter(), time.process_time()
            for processed in done:
                store.append(processed.index, processed.grey, processed.labels,
                             {"shift_px": list(processed.drift.shift_px)})
                shifts.append(processed.drift.shift_px)
            t3, c3 = time.perf_counter(), time.process_time()
            if len(done) != 1:
                continue  # calibration: slices held back, then fitted and processed at once (not timed)
            times["read"].append(t1 - t0)
            times["append"].append(t3 - t2)
            for stage in ("correct", "align", "segment"):
                times[stage].append(1e-3 * done[0].timings_ms[stage])
            cpu["read"].append(c1 - c0)
            cpu["chain"].append(c2 - c1)
            cpu["append"].append(c3 - c2)
        for processed in chain.flush():  # the last slices wait for their 3-D context until the end
            store.append(processed.index, processed.grey, processed.labels,
                         {"shift_px": list(processed.drift.shift_px)})
            shifts.append(processed.drift.shift_px)
        rss_end = process.memory_info().rss / 2**20
        stored = np.asarray(store.labels[:])

    # the first slice after calibration pays one-off costs (FFT plans): report the steady state
    ms = {stage: 1e3 * float(np.mean(v[1:])) for stage, v in times.items()}
    cpu_ms = {stage: 1e3 * float(np.mean(v[1:])) for stage, v in cpu.items()}
    total = sum(ms.values())
    truth = acq.labels
    valid = stored > 0
    align_ms = {"revwatch": ms["align"]}
    drifts = {"revwatch": np.array(shifts)}
    if peers:
        drifts.update(_peer_drifts(acq.slices, align_ms))
    return {
        "shape": list(shape),
        "dtype": dtype.name,
        "n_slices": int(n_slices),
        "ms_per_stage": ms,
        "cpu_ms_per_stage": cpu_ms,
        "ms_per_slice": total,
        "cpu_ms_per_slice": sum(cpu_ms.values()),
        "load_average": list(os.getloadavg()),
        "slices_per_s": 1e3 / total if total > 0 else float("inf"),
        "align_ms": align_ms,
        "align_speedup": {m: t / ms["align"] for m, t in align_ms.items() if m != "revwatch"},
        "drift_rms_px": {m: _rms(d - acq.drift_px) for m, d in drifts.items()},
        "drift_end_px": {m: float(np.hypot(*(d[-1] - acq.drift_px[-1]))) for m, d in drifts.items()},
        "label_accuracy": float((stored[valid] == truth[valid]).mean()),
        "fraction_error_pp": {int(k): 100 * float((stored[valid] == k).mean() - (truth[valid] == k).mean())
                              for k in range(1, len(chain.phases.names) + 1)},
        "rss_mb": [rss_start, rss_end],
    }


def format_report(result):
    """Human-readable lines for one :func:`run_slice_bench` result."""
    shape = "x".join(str(v) for v in result["shape"])
    lines = [f"{shape} {result['dtype']}, {result['n_slices']} slices: "
             f"{result['slices_per_s']:.1f} slices/s ({result['ms_per_slice']:.1f} ms per slice)"]
    lines.append("  ms per stage (wall): " + ", ".join(f"{k} {v:.1f}" for k, v in result["ms_per_stage"].items()))
    lines.append("  ms per stage (CPU):  " + ", ".join(f"{k} {v:.1f}" for k, v in result["cpu_ms_per_stage"].items())
                 + f"; {result['cpu_ms_per_slice']:.1f} ms CPU per slice; load average "
                 + ", ".join(f"{v:.1f}" for v in result["load_average"]))
    for method, t in result["align_ms"].items():
        ratio = result["align_speedup"].get(method)
        lines.append(f"  align {method:32s} {t:8.1f} ms/slice"
                     + (f"  ({ratio:.1f}x revwatch's time)" if ratio else "")
                     + f"  drift RMS {result['drift_rms_px'][method]:.2f} px, end {result['drift_end_px'][method]:.2f} px")
    lines.append(f"  labels: {100 * result['label_accuracy']:.2f} % correct, fraction errors (pp) "
                 + ", ".join(f"{k}: {v:+.2f}" for k, v in result["fraction_error_pp"].items()))
    lines.append(f"  RSS {result['rss_mb'][0]:.0f} -> {result['rss_mb'][1]:.0f} MB")
    return "\n".join(lines)


def main(*, quick=False, slices=None):
    """``revwatch bench``: print the figures for 1024x1024 8-bit and 2048x2048 16-bit slices."""
    cases = [((1024, 1024), np.uint8), ((2048, 2048), np.uint16)]
    if quick:
        cases = [((512, 512), np.uint8), ((1024, 1024), np.uint16)]
    n = slices or (8 if quick else 20)
    for shape, dtype in cases:
        print(format_report(run_slice_bench(shape, dtype, n)), flush=True)
    return 0
