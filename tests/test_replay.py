"""`revwatch replay`: the copies carry the source's own metadata, never an invented pixel size (issue 11)."""

import numpy as np
import pytest
import tifffile

from agent.cli import main
from agent.replay import ReplayError, replay
from processing.io import read_fei_project_spacing_um, read_slice, write_slice

STACK = np.random.default_rng(0).integers(0, 255, (3, 16, 16), dtype=np.uint8)


def test_stack_without_pixel_size_is_refused_unless_given(tmp_path, capsys):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, STACK, photometric="minisblack")
    with pytest.raises(ReplayError, match="carries no pixel size; give it with --pixel-size-nm"):
        replay(source, tmp_path / "out", interval_s=0)
    assert not (tmp_path / "out").exists()  # refused before anything is written
    assert main(["replay", str(source), "--to", str(tmp_path / "out"), "--interval-s", "0"]) == 2
    assert "--pixel-size-nm" in capsys.readouterr().err
    assert replay(source, tmp_path / "given", interval_s=0, pixel_size_um=0.007) == 3
    copies = sorted((tmp_path / "given").glob("*.tif"))
    first = read_slice(copies[0])
    assert first.pixel_size_um == (0.007, 0.007)
    np.testing.assert_array_equal(first.pixels, STACK[0])
    assert read_fei_project_spacing_um(tmp_path / "given") is None  # no spacing invented either


def test_stack_keeps_its_imagej_pixel_size_and_spacing(tmp_path):
    source = tmp_path / "stack.tif"
    tifffile.imwrite(source, STACK, imagej=True, resolution=(1 / 0.012, 1 / 0.015),
                     metadata={"unit": "um", "spacing": 0.03, "axes": "ZYX"})
    assert replay(source, tmp_path / "out", interval_s=0) == 3
    copy = read_slice(sorted((tmp_path / "out").glob("*.tif"))[2])
    assert copy.pixel_size_um == pytest.approx((0.015, 0.012)) and copy.index == 3
    assert read_fei_project_spacing_um(tmp_path / "out") == pytest.approx(0.03)
    with pytest.raises(ReplayError, match="differs from the stack's metadata"):
        replay(source, tmp_path / "other", interval_s=0, pixel_size_um=0.02)


def test_folder_copies_tescan_sidecars_under_their_names(tmp_path):
    source = tmp_path / "tescan"
    for index in (1, 2):
        write_slice(source, index, STACK[index], layout="tescan", pixel_size_um=0.004)
    assert sorted(p.name for p in source.iterdir()) == ["slice_00001-tif.hdr", "slice_00001.tif",
                                                        "slice_00002-tif.hdr", "slice_00002.tif"]
    assert replay(source, tmp_path / "out", interval_s=0) == 2
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in source.iterdir())
    assert read_slice(tmp_path / "out" / "slice_00002.tif").pixel_size_um == (0.004, 0.004)
