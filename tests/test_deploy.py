"""The deployment recipes under deploy/: every config loads, the systemd unit is consistent with them."""

import configparser
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest

from agent.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
CONFIGS = sorted(DEPLOY.rglob("*.toml"))
UNIT = DEPLOY / "linux" / "revwatch.service"


def test_the_recipes_are_there():
    names = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    for expected in ("README.md", "linux/revwatch.service", "windows/README.md", "windows/install-revwatch-task.ps1",
                     "configs/auto-slice-and-view.toml", "configs/atlas3d.toml", "dask-cluster.md", "Containerfile"):
        assert expected in names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(DEPLOY).as_posix())
def test_every_config_loads(path):
    config = load_config(path)
    assert config.acquisition.folder is not None, f"{path.name} should name the acquisition folder"


def test_windows_paths_are_kept_verbatim():
    asv = load_config(DEPLOY / "configs" / "auto-slice-and-view.toml")
    folder = PureWindowsPath(str(asv.acquisition.folder))
    assert folder.drive == "D:" and folder.parts[-2:] == ("Images", "SEM Image")
    atlas = load_config(DEPLOY / "configs" / "atlas3d.toml")
    assert PureWindowsPath(str(atlas.acquisition.folder)).name == "SESI"
    # Off loopback only with CURVE keys.
    assert not atlas.publish.endpoint.startswith("tcp://127.") and atlas.publish.keys_dir is not None
    assert not atlas.publish.insecure


def _unit():
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read(UNIT, encoding="utf-8")
    return parser


def test_systemd_unit_runs_the_agent_and_drains_on_stop():
    service = _unit()["Service"]
    assert service["ExecStart"] == "/opt/revwatch/.venv/bin/revwatch run --config /etc/revwatch/revwatch.toml"
    assert service["User"] not in ("", "root")
    assert service["Restart"] == "on-failure" and int(service["RestartSec"]) > 0
    assert service["KillSignal"] == "SIGTERM" and int(service["TimeoutStopSec"]) >= 60


def test_linux_config_writes_only_where_the_unit_allows():
    service = _unit()["Service"]
    assert service["ProtectSystem"] == "strict"
    writable = [PurePosixPath(p) for p in service["ReadWritePaths"].split()]
    config = load_config(DEPLOY / "configs" / "linux-smb-share.toml")
    volume = PurePosixPath(str(config.volume.path))
    assert any(volume.is_relative_to(w) for w in writable), (volume, writable)
    assert config.acquisition.polling, "an SMB share delivers no file events: polling is needed"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verify(tmp_path):
    # verify insists that ExecStart exists: point it at this interpreter, the rest is the file as shipped.
    text = UNIT.read_text(encoding="utf-8")
    unit = tmp_path / "revwatch.service"
    unit.write_text(text.replace("/opt/revwatch/.venv/bin/revwatch", f"{sys.executable} -m agent.cli"), encoding="utf-8")
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "revwatch.service" not in result.stderr, result.stderr
