"""`revwatch demo` runs the whole product on generated data and ends by itself."""

import io
import re

import pytest
from rich.console import Console

from agent.demo import run_demo
from agent.store import VolumeStore


def test_demo_ends_by_itself_and_says_where_the_volume_is(tmp_path):
    out = io.StringIO()
    console = Console(file=out, width=100, height=40, force_terminal=False)
    assert run_demo(slices=24, size_px=96, interval_s=0.0, workdir=tmp_path, seed=3, console=console) == 0
    text = out.getvalue()
    volume = tmp_path / "demo.revwatch.ome.zarr"
    assert str(volume) in text.replace("\n", "")
    assert "truth" in text and "measured" in text
    # the measured phase shares are of the assigned voxels, as the truth's: each column sums to 100 %
    rows = re.findall(r"(pore|electrolyte|active)\W+([\d.]+) %\W+([\d.]+) %", text)
    assert {name for name, _, _ in rows} == {"pore", "electrolyte", "active"}
    for column in (1, 2):
        assert sum(float(row[column]) for row in rows[-3:]) == pytest.approx(100.0, abs=0.2)
    store = VolumeStore.open(volume, read_only=True)
    assert [s["index"] for s in store.slices] == list(range(1, 25))
