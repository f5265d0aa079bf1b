"""The command line: log options anywhere, one message for every missing setting (issue 11)."""

import logging

import numpy as np
import pytest
import tifffile

from agent.cli import _log_level, build_parser, main
from agent.publish import free_loopback_endpoint


@pytest.mark.parametrize(("argv", "level"), [
    (["run", "F"], logging.INFO),
    (["run", "F", "-v"], logging.DEBUG),
    (["-v", "run", "F"], logging.DEBUG),
    (["run", "F", "--log-level", "warning"], logging.WARNING),
    (["--log-level", "error", "run", "F", "-v"], logging.ERROR),  # --log-level wins over -v
    (["doctor"], logging.WARNING),
    (["doctor", "-v"], logging.INFO),
    (["monitor", "-vv"], logging.DEBUG),
])
def test_verbosity_before_or_after_the_command(argv, level):
    args = build_parser().parse_args(argv)
    assert _log_level(args.command, args.verbose, args.log_level) == level


def test_run_reports_every_missing_setting_at_once_and_leaves_nothing(tmp_path, capsys):
    folder = tmp_path / "slices"
    folder.mkdir()
    for index in (1, 2):  # no pixel size, no z, no project file
        tifffile.imwrite(folder / f"img_{index:03d}.tif", np.zeros((8, 8), np.uint8))
    rc = main(["run", str(folder), "-v", "--endpoint", free_loopback_endpoint(), "--idle-exit-s", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot start (2 problems)" in err
    assert "set acquisition.pixel_size_nm" in err and "set acquisition.slice_spacing_nm" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slices"]
