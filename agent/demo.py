"""``revwatch demo``: the whole product on generated data, with no arguments.

It generates a 3-phase composite with known labels, renders it as Auto Slice & View slices
(noise, blur, curtaining, brightness and stage drift), replays them into a folder at a cadence,
runs the real agent on that folder (watchdog, OME-Zarr, Dask, ZeroMQ on a free loopback port)
with the live monitor in this terminal, exits by itself, and compares what the agent measured
with the generator's truth.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from agent.config import Config
from agent.monitor import MonitorState, render
from agent.pipeline import Agent
from agent.publish import free_loopback_endpoint
from agent.replay import replay
from processing.errors import RevwatchError
from processing.phases import Phases
from processing.synthetic import generate_microstructure, render_acquisition, simulate_drift, write_acquisition

__all__ = ["run_demo"]

log = logging.getLogger(__name__)

_SPACING_UM = (0.05, 0.02, 0.02)
_DRIFT_PAD_PX = 16  # beyond the largest drift: room for the renderer's blur and interpolation
# The protective cap on top of the trench, which every slice shows: the drift is measured on it.
_CAP_ROWS = 24
# Small particles, so that a demo-sized volume can become representative.
_PARTICLE_RADIUS_UM = 0.2
_PHASES = ("pore", "electrolyte", "active")


def _generate(source: Path, *, slices: int, size_px: int, seed: int, console: Console):
    with console.status(f"generating a {slices}-slice acquisition of {size_px}x{size_px} px (seed {seed})"):
        rng = np.random.default_rng(seed)
        drift = simulate_drift(slices, drift_px_per_slice=0.6, jump_probability=0.01, jump_px=6.0, rng=rng)
        # the sample must extend beyond the field of view by the largest drift, whatever the seed
        edge = size_px + 2 * (int(np.ceil(np.abs(drift).max())) + _DRIFT_PAD_PX)
        labels = generate_microstructure(
            (slices, edge, edge), spacing_um=_SPACING_UM, particle_radius_um=_PARTICLE_RADIUS_UM, rng=rng
        )
        acq = render_acquisition(labels, field_shape=(size_px, size_px), drift_px=drift, cap_px=_CAP_ROWS, rng=rng)
        write_acquisition(acq, source, layout="fei", pixel_size_um=_SPACING_UM[1], slice_spacing_um=_SPACING_UM[0])
    return acq


def _truth_table(acq, metrics_doc: dict | None, phases: Phases) -> Table:
    table = Table(title="measured by the agent vs the generator's truth", title_justify="left")
    table.add_column("phase")
    table.add_column("truth", justify="right")
    table.add_column("measured", justify="right")
    measured = (metrics_doc or {}).get("volume_fraction", {})  # shares of the assigned voxels
    sample = acq.labels[acq.labels > 0]  # the cap is not sample
    for name, label in phases.labels.items():
        truth = float(np.mean(sample == label))
        value = measured.get(name)
        shown = "-" if value is None else f"{100 * value:.1f} %"
        table.add_row(name, f"{100 * truth:.1f} %", shown)
    return table


def run_demo(
    *,
    slices: int = 300,
    size_px: int = 256,
    interval_s: float = 0.02,
    workdir: str | Path | None = None,
    seed: int = 0,
    endpoint: str | None = None,
    console: Console | None = None,
) -> int:
    """Run the demo; returns the process exit code (0 on success).

    Parameters
    ----------
    slices, size_px : int
        Size of the generated acquisition (slices of `size_px` x `size_px` pixels).
    interval_s : float
        Seconds between two replayed slices.
    workdir : str or Path, optional
        Where the acquisition and the volume go; default a new temporary folder (kept).
    seed : int
        Seed of the generated microstructure and acquisition.
    endpoint : str, optional
        ZeroMQ PUB endpoint; default a free loopback port.
    console : rich.console.Console, optional
        Where to draw (tests pass a recording console).
    """
    if slices < 16:
        raise ValueError(f"slices: the demo needs at least 16, got {slices}")
    if size_px < 64:
        raise ValueError(f"size_px: the demo needs at least 64, got {size_px}")
    console = console or Console()
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="revwatch-demo-"))
    source, incoming = workdir / "generated", workdir / "incoming"
    volume = workdir / "demo.revwatch.ome.zarr"
    acq = _generate(source, slices=slices, size_px=size_px, seed=seed, console=console)
    incoming.mkdir(parents=True, exist_ok=True)

    config = Config.model_validate(
        {
            "acquisition": {"folder": str(incoming), "settle_s": 0.05, "gap_timeout_s": 10.0},
            "processing": {"cap_rows": _CAP_ROWS},
            "volume": {"path": str(volume)},
            "publish": {"endpoint": endpoint or free_loopback_endpoint(), "heartbeat_interval_s": 1.0},
            # The volume fractions: a demo-sized field is too narrow for the shape metrics' blocks.
            "rev": {"exit_when_representative": True, "tracked": [f"volume_fraction.{name}" for name in _PHASES]},
        }
    )
    agent = Agent(config)
    state = MonitorState()
    all_done = threading.Event()

    def follow(name, doc):
        state.update(name, doc)
        if name == "status" and doc.get("slices_processed", 0) + doc.get("slices_skipped", 0) >= slices:
            all_done.set()

    agent.events.subscribe(follow, name="demo monitor")
    replay_done = threading.Event()  # set when the agent ends first (representative): stop feeding
    feeder = threading.Thread(
        target=replay, args=(source, incoming), kwargs={"interval_s": interval_s, "stop": replay_done},
        name="demo replay", daemon=True,
    )
    result = {}

    def run_agent():
        try:
            result["summary"] = agent.run(stop_event=all_done)
        except RevwatchError as exc:
            result["error"] = exc

    def draw():
        return render(state, width=console.width, height=console.height)

    started = time.monotonic()
    console.print(f"[bold]revwatch demo[/]: acquisition in {incoming}, volume {volume}, ZeroMQ {config.publish.endpoint}")
    with Live(draw(), console=console, refresh_per_second=4, transient=False) as live:
        feeder.start()
        runner = threading.Thread(target=run_agent, name="demo agent", daemon=True)
        runner.start()
        while runner.is_alive():
            runner.join(0.25)
            live.update(draw())
        replay_done.set()
        live.update(draw())
    console.print()
    if "error" in result:
        console.print(f"[red]the agent stopped with an error: {result['error']}[/]")
        return 1
    summary = result["summary"]
    console.print(_truth_table(acq, agent.events.latest("metrics"), config.phases.to_phases()))
    console.print(summary.describe())
    if summary.stop is not None:
        console.print(f"the acquisition could have stopped after {summary.depth_slices} of {slices} slices")
    console.print(f"demo finished in {time.monotonic() - started:.0f} s; open the volume with napari: {volume}")
    return 0
