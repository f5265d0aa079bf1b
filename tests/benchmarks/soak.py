"""Soak: thousands of slices through `revwatch run` as fast as it goes; throughput and memory every 100 slices.

    python tests/benchmarks/soak.py [--slices 2000] [--size-px 256] [--workdir DIR]

A generated acquisition of ``--base`` slices (``--size-px`` square, 8-bit, the default artefacts and
drift) is replayed back and forth (1..B, B-1..1, 2..B, ...) so that consecutive slices are always
neighbours in the sample however many are replayed. The agent is a ``revwatch run`` subprocess with
the default configuration (pixel size and slice spacing given); the slices are copied into its
folder with ``agent.replay.replay(interval_s=0)`` while it runs. Progress is read from the volume's
provenance log (what is committed), memory with psutil (RSS of the agent and its children).

Prints one row per 100 committed slices (elapsed time, throughput over the last 100 and overall,
RSS), then the slope of RSS against slices (over all rows and over the second half) and whether
memory stays flat, and checks the volume holds every slice exactly once.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from agent.replay import replay
from agent.store import VolumeStore, provenance_log_path
from processing.io import write_slice
from processing.synthetic import generate_microstructure, render_acquisition

PIXEL_SIZE_UM = 0.02
SLICE_SPACING_UM = 0.05
REPO = Path(__file__).resolve().parents[2]


def ping_pong(k: int, base: int) -> int:
    """Position in a `base`-slice stack of the k-th replayed slice (0-based), going back and forth."""
    period = 2 * (base - 1)
    r = k % period
    return r if r < base else period - r


def make_source(folder: Path, n: int, size_px: int, base: int, seed: int) -> None:
    """Write `n` slice files 1..n into `folder` (skipped when they are already there)."""
    if len(list(folder.glob("*.tif"))) == n:
        return
    margin = size_px // 4 + 48
    labels = generate_microstructure((base, size_px + 2 * margin, size_px + 2 * margin),
                                     spacing_um=(SLICE_SPACING_UM, PIXEL_SIZE_UM, PIXEL_SIZE_UM),
                                     particle_radius_um=0.4, rng=seed)
    slices = render_acquisition(labels, field_shape=(size_px, size_px), rng=seed + 1).slices
    for k in range(n):
        write_slice(folder, k + 1, slices[ping_pong(k, base)], pixel_size_um=PIXEL_SIZE_UM)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def committed(volume: Path) -> int:
    try:
        with open(provenance_log_path(volume), "rb") as fh:
            return sum(1 for line in fh if line.startswith(b'{"kind": "slice"'))
    except FileNotFoundError:
        return 0


def rss_mb(proc: psutil.Process) -> float:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total / 2**20


def slope_per_1000(rows, start: int = 0) -> float:
    x = np.array([r[0] for r in rows[start:]], dtype=float)
    y = np.array([r[4] for r in rows[start:]], dtype=float)
    return float(np.polyfit(x, y, 1)[0] * 1000) if len(x) >= 2 else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=2000)
    parser.add_argument("--size-px", type=int, default=256)
    parser.add_argument("--base", type=int, default=200, help="slices generated (replayed back and forth)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="keep the generated slices here (reused by the next run)")
    parser.add_argument("--flat-mb-per-1000", type=float, default=20.0,
                        help="memory counts as flat when the second-half RSS slope is below this (MB per 1000 slices)")
    parser.add_argument("--timeout-s", type=float, default=3600)
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="revwatch-soak-"))
    source, folder, volume = workdir / "source", workdir / "incoming", workdir / "soak.ome.zarr"
    t0 = time.monotonic()
    make_source(source, args.slices, args.size_px, min(args.base, args.slices), args.seed)
    print(f"{args.slices} slices of {args.size_px} x {args.size_px} px in {source} ({time.monotonic() - t0:.0f} s)")
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(volume, ignore_errors=True)
    folder.mkdir(parents=True)

    cmd = [sys.executable, "-m", "agent.cli", "run", str(folder), "--volume", str(volume),
           "--endpoint", f"tcp://127.0.0.1:{free_port()}", "--idle-exit-s", "20",
           "--set", f"acquisition.pixel_size_nm={PIXEL_SIZE_UM * 1000}",
           "--set", f"acquisition.slice_spacing_nm={SLICE_SPACING_UM * 1000}"]
    log = open(workdir / "agent.log", "w")
    agent = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    proc = psutil.Process(agent.pid)
    writer = threading.Thread(target=replay, args=(source, folder), kwargs={"interval_s": 0}, daemon=True)
    writer.start()

    rows = []  # (slices, elapsed_s, rate_last_100, rate_overall, rss_mb)
    first_time = None
    deadline = time.monotonic() + args.timeout_s
    print(f"{'slices':>7} {'elapsed_s':>9} {'last100/s':>9} {'overall/s':>9} {'rss_MB':>7}")
    while agent.poll() is None and time.monotonic() < deadline:
        done = committed(volume)
        now = time.monotonic()
        if done and first_time is None:
            first_time = now
        while done >= (len(rows) + 1) * 100:
            slices = (len(rows) + 1) * 100
            previous = rows[-1] if rows else (0, 0.0)
            elapsed = now - first_time
            rate_last = 100 / max(elapsed - previous[1], 1e-9) if rows else float("nan")
            rows.append((slices, elapsed, rate_last, slices / max(elapsed, 1e-9), rss_mb(proc)))
            r = rows[-1]
            print(f"{r[0]:7d} {r[1]:9.1f} {r[2]:9.2f} {r[3]:9.2f} {r[4]:7.0f}", flush=True)
        if done >= args.slices:
            break
        time.sleep(0.1)
    agent.terminate()  # SIGTERM: the agent drains, refreshes the metrics and flushes the volume
    agent.wait(120)
    log.close()

    store = VolumeStore.open(volume, read_only=True)
    indices = [s["index"] for s in store.slices]
    exact = indices == list(range(1, args.slices + 1))
    print(f"\nagent exit code {agent.returncode}; volume holds {store.depth} slices "
          f"({'every slice exactly once, in order' if exact else 'NOT every slice exactly once'}), "
          f"{len(store.skipped)} skipped")
    if len(rows) >= 2:
        whole, second = slope_per_1000(rows), slope_per_1000(rows, len(rows) // 2)
        rate = rows[-1][0] / rows[-1][1]
        print(f"throughput {rate:.2f} slices/s overall ({args.size_px} x {args.size_px} px, default configuration)")
        print(f"RSS {rows[0][4]:.0f} MB at {rows[0][0]} slices, {rows[-1][4]:.0f} MB at {rows[-1][0]}; slope "
              f"{whole:+.1f} MB/1000 slices over the run, {second:+.1f} over the second half")
        flat = second < args.flat_mb_per_1000
        print(f"memory {'stays flat' if flat else 'GROWS'} (second-half slope {'<' if flat else '>='} "
              f"{args.flat_mb_per_1000:g} MB per 1000 slices)")
        return 0 if exact and flat else 1
    print("too few slices for a memory slope")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
