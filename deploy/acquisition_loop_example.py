"""A slice-and-view loop that stops as soon as revwatch says the volume is representative.

The loop is shaped like OpenFIBSEM's slice-and-view (the ``fibsem`` package): mill one
slice (``fibsem.milling.mill_stages``), image the new face (``fibsem.acquire.new_image``),
write the image where ``revwatch run`` watches, and check the agent's verdict between two
slices. The check never blocks the microscope: a background thread waits on the agent
(``agent.client.wait_until_representative``) and the loop only looks at a flag.

Try it with the fake microscope (synthetic slices), in two terminals::

    revwatch run /tmp/fake-acq                                   # the agent
    python deploy/acquisition_loop_example.py /tmp/fake-acq      # the microscope

To drive a real instrument, replace the three functions of :func:`fibsem_hooks` (they are
the OpenFIBSEM calls) and keep :func:`slice_and_view` as it is.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.client import DEFAULT_ENDPOINT, wait_until_representative
from processing.io import write_fei_project, write_slice
from processing.synthetic import generate_microstructure, render_acquisition, simulate_drift

log = logging.getLogger("acquisition")


class StopWatcher:
    """Follows the agent in a background thread; ``stop`` is set once it says representative.

    Parameters
    ----------
    endpoint : str
        The agent's PUB endpoint (``revwatch run --endpoint``).
    curve : str or os.PathLike, optional
        Key folder when the agent runs on another machine with CURVE keys.

    Notes
    -----
    A ``stop`` whose ``rev`` is not representative (the agent gave up on an error) is
    logged and ignored: the acquisition goes on and the operator decides.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, *, curve=None, **client_options):
        self.stop: dict | None = None
        self._options = dict(curve=curve, **client_options)
        self._endpoint = endpoint
        self._thread = threading.Thread(target=self._follow, name="revwatch-stop-watcher",
                                        daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while True:
            try:
                doc = wait_until_representative(self._endpoint, timeout_s=60, **self._options)
            except TimeoutError:
                continue  # no verdict yet (or no agent yet): keep listening
            if doc.get("rev") and doc["rev"].get("representative"):
                log.info("agent: representative at %s slices (%s)", doc["depth_slices"], doc["reason"])
                self.stop = doc
                return
            log.warning("agent stopped without a verdict (%s); acquisition continues", doc["reason"])
            return

    @property
    def representative(self) -> bool:
        return self.stop is not None


def slice_and_view(microscope, *, mill, image, save, watcher: StopWatcher, max_slices: int) -> int:
    """Mill, image and save until the agent says representative or `max_slices` are done.

    Parameters
    ----------
    microscope : object
        Whatever `mill`, `image` and `save` need (a ``FibsemMicroscope``).
    mill, image, save : callable
        ``mill(microscope)`` removes one slice; ``image(microscope)`` returns the image of
        the new face; ``save(image, index)`` writes it where the agent watches.
    watcher : StopWatcher
    max_slices : int
        Upper bound (the acquisition plan without revwatch).

    Returns
    -------
    int
        Number of slices acquired.
    """
    for index in range(1, max_slices + 1):
        mill(microscope)
        save(image(microscope), index)
        if watcher.representative:
            log.info("stopping after %d of %d planned slices: %d saved", index, max_slices,
                     max_slices - index)
            return index
    log.info("plan finished (%d slices) before the agent called the volume representative",
             max_slices)
    return max_slices


# -- the real instrument ---------------------------------------------------------------

def fibsem_hooks(settings, stage, folder: Path):
    """The three calls for an OpenFIBSEM microscope (``utils.setup_session()``).

    `settings` is the ``MicroscopeSettings`` of the session, `stage` the
    ``FibsemMillingStage`` of one slice (its pattern advanced by the slice thickness
    after each cut, as in OpenFIBSEM's slice-and-view protocol).
    """
    from fibsem import acquire, milling  # imported here: only needed with a real instrument

    def mill(microscope):
        milling.mill_stages(microscope, [stage])
        stage.pattern.point.y += settings.protocol["slice_thickness_m"]  # next face

    def image(microscope):
        return acquire.new_image(microscope, settings.image)

    def save(img, index):
        # FibsemImage: pixels in .data, pixel size in metres in .metadata.pixel_size
        size = img.metadata.pixel_size
        write_slice(folder, index, img.data, layout="fei",
                    pixel_size_um=(size.y * 1e6, size.x * 1e6))

    return mill, image, save


# -- the fake instrument ---------------------------------------------------------------

@dataclass
class FakeImage:
    """What ``acquire.new_image`` returns, reduced to what the loop uses."""

    data: np.ndarray
    pixel_size_um: float


class FakeMicroscope:
    """Stand-in for a FIB-SEM: a synthetic composite electrode, one slice per cut.

    Parameters
    ----------
    slices : int
        Depth of the sample (the loop cannot mill more).
    field_px : int
        Image size (square).
    pixel_size_um, slice_thickness_um : float
    mill_s : float
        Seconds one cut takes (real instruments: 30 s to 3 min).
    seed : int
    """

    def __init__(self, *, slices=400, field_px=192, pixel_size_um=0.02, slice_thickness_um=0.03,
                 mill_s=0.0, seed=0):
        rng = np.random.default_rng(seed)
        drift = simulate_drift(slices, rng=rng)
        margin = int(np.ceil(np.abs(drift).max())) + 16  # the stage drifts over the sample
        labels = generate_microstructure(
            (slices, field_px + 2 * margin, field_px + 2 * margin),
            spacing_um=(slice_thickness_um, pixel_size_um, pixel_size_um), rng=rng)
        self._acq = render_acquisition(labels, drift_px=drift, field_shape=(field_px, field_px), rng=rng)
        self.pixel_size_um = pixel_size_um
        self.slice_thickness_um = slice_thickness_um
        self.mill_s = mill_s
        self.face = 0

    # the calls OpenFIBSEM's milling.mill_stages / acquire.new_image end up making
    def run_milling(self):
        if self.face >= len(self._acq.slices):
            raise RuntimeError(f"milled through the sample ({self.face} slices)")
        time.sleep(self.mill_s)
        self.face += 1

    def acquire_image(self) -> FakeImage:
        return FakeImage(self._acq.slices[self.face - 1], self.pixel_size_um)


def fake_hooks(folder: Path):
    """``mill``, ``image``, ``save`` for :class:`FakeMicroscope`, writing FEI-style files."""

    def save(img: FakeImage, index: int):
        write_slice(folder / "Images" / "SEM Image", index, img.data, layout="fei",
                    pixel_size_um=img.pixel_size_um)

    return FakeMicroscope.run_milling, FakeMicroscope.acquire_image, save


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where the slices are written (revwatch run FOLDER)")
    parser.add_argument("--endpoint", default=DEFAULT_ENDPOINT, help="the agent's PUB endpoint")
    parser.add_argument("--keys-dir", type=Path, help="CURVE key folder, for a remote agent")
    parser.add_argument("--max-slices", type=int, default=400, help="the plan without revwatch")
    parser.add_argument("--mill-s", type=float, default=1.0, help="seconds per cut of the fake microscope")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    microscope = FakeMicroscope(slices=args.max_slices, mill_s=args.mill_s, seed=args.seed)
    write_fei_project(args.folder, slice_spacing_um=microscope.slice_thickness_um)
    watcher = StopWatcher(args.endpoint, curve=args.keys_dir)
    mill, image, save = fake_hooks(args.folder)
    done = slice_and_view(microscope, mill=mill, image=image, save=save, watcher=watcher,
                          max_slices=args.max_slices)
    print(f"acquired {done} slices; "
          + ("representative: " + watcher.stop["reason"] if watcher.stop else "no verdict"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
