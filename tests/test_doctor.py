"""`revwatch doctor` on real folders, real volumes, real sockets and a real (in-process) Dask cluster."""

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys

import numpy as np
import pytest
from rich.console import Console

from agent.config import load_config
from agent.doctor import (
    FAIL,
    OK,
    PACKAGES,
    WARN,
    Check,
    check_detector,
    check_disk,
    check_folder,
    check_machine,
    check_packages,
    check_port,
    check_publish_security,
    check_scheduler,
    check_slices,
    check_spacing,
    check_volume_resume,
    check_volume_writable,
    doctor_checks,
    expected_volume_bytes,
    find_slices,
    run_doctor,
)
from agent.keys import create_keys
from agent.store import VolumeStore
from processing.phases import Phases
from processing.synthetic import write_acquisition

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_pair():
    """Two consecutive free loopback ports (PUB and snapshot = PUB + 1)."""
    for _ in range(50):
        port = _free_port()
        with socket.socket() as a, socket.socket() as b:
            try:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    pytest.skip("no two consecutive free ports on loopback")


def _publish(**kw):
    return load_config(None, [f"publish.{k}={v}" for k, v in kw.items()]).publish


# -- acquisition folder ---------------------------------------------------------------------


def test_folder_not_set_missing_file_and_fine(tmp_path):
    assert check_folder(None).status == FAIL
    missing = check_folder(tmp_path / "nope")
    assert missing.status == FAIL and "does not exist" in missing.detail and str(tmp_path) in missing.detail
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    assert check_folder(a_file).status == FAIL
    (tmp_path / "a").mkdir()
    (tmp_path / "b.tif").write_bytes(b"")
    ok = check_folder(tmp_path)
    assert ok.status == OK and "3 entries" in ok.detail and ok.fix == ""


@pytest.mark.skipif(os.name == "nt", reason="a drive-letter path is valid on Windows")
def test_windows_path_on_linux_is_named(tmp_path):
    c = check_folder("D:/ASV/cathode-01")
    assert c.status == FAIL and "Windows path" in c.fix


@pytest.mark.skipif(ROOT or os.name == "nt", reason="root reads any folder; POSIX permissions needed")
def test_unlistable_folder_fails(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        c = check_folder(locked)
    finally:
        locked.chmod(0o755)
    assert c.status == FAIL and "cannot be listed" in c.detail


def test_fei_project_slices_pixel_and_spacing(small_fei_project):
    groups = find_slices(small_fei_project)
    assert list(groups) == [small_fei_project / "Images" / "SEM Image"]
    files = groups[small_fei_project / "Images" / "SEM Image"]
    assert len(files) == 16 and files[0].name == "SEM Image - SliceImage - 001.tif"
    check, first = check_slices(groups)
    assert check.status == OK, check
    assert "16 slice files" in check.detail and "128 x 128 px uint8" in check.detail
    assert "pixel 20 nm (metadata)" in check.detail
    assert first.pixels.shape == (128, 128) and first.index == 1
    # EMProject.emxml is found from the project root and from the detector folder.
    for folder in (small_fei_project, small_fei_project / "Images" / "SEM Image"):
        spacing = check_spacing(folder, groups)
        assert spacing.status == OK and "50 nm (EMProject.emxml" in spacing.detail


def test_atlas_spacing_from_names_and_two_detectors(small_acquisition, tmp_path):
    write_acquisition(small_acquisition, tmp_path, layout="zeiss", pixel_size_um=0.01, slice_spacing_um=0.03)
    groups = find_slices(tmp_path)
    assert [d.name for d in groups] == ["SESI"]
    check, _ = check_slices(groups)
    assert check.status == OK and "pixel 10 nm (metadata)" in check.detail
    spacing = check_spacing(tmp_path, groups)
    assert spacing.status == OK and "Atlas" in spacing.detail
    # A second detector's slices beside the first would mix into one volume: refused, with the list.
    shutil.copytree(tmp_path / "SESI", tmp_path / "EsB")
    groups = find_slices(tmp_path)
    two, _ = check_detector(tmp_path, groups)
    assert two.status == FAIL and "several detectors" in two.detail
    assert "'SESI' (16 slices)" in two.detail and "'EsB' (16 slices)" in two.detail and "acquisition.detector" in two.fix
    # The configured detector picks one folder (by name, any case); an unknown one lists what is there.
    picked, chosen = check_detector(tmp_path, groups, detector="esb")
    assert picked.status == OK and list(chosen) == [tmp_path / "EsB"]
    wrong, _ = check_detector(tmp_path, groups, detector="InLens")
    assert wrong.status == FAIL and "'InLens'" in wrong.detail and "'SESI'" in wrong.detail and "'EsB'" in wrong.detail


def test_configured_pixel_size_against_metadata(small_fei_project):
    """A configured pixel size 1 % or more off the metadata fails, naming both; force_pixel_size makes it a warning."""
    groups = find_slices(small_fei_project)
    same, _ = check_slices(groups, pixel_size_nm=20.1)  # 0.5 % off: the same
    assert same.status == OK
    off, _ = check_slices(groups, pixel_size_nm=25.0)
    assert off.status == FAIL and "25 nm" in off.detail and "metadata says 20 nm" in off.detail
    forced, _ = check_slices(groups, pixel_size_nm=25.0, force_pixel_size=True)
    assert forced.status == WARN and "configured value is used" in forced.detail


def test_no_spacing_anywhere_fails_unless_configured(small_fei_project, tmp_path):
    shutil.copytree(small_fei_project / "Images" / "SEM Image", tmp_path / "slices")
    groups = find_slices(tmp_path / "slices")
    assert check_spacing(tmp_path / "slices", groups).status == FAIL
    configured = check_spacing(tmp_path / "slices", groups, slice_spacing_nm=25.0)
    assert configured.status == OK and "25 nm (configured)" in configured.detail
    pixel, _ = check_slices(groups, pixel_size_nm=7.5)
    assert "pixel 7.5 nm (configured)" in pixel.detail


def test_empty_folder_and_unreadable_first_slice(tmp_path):
    groups = find_slices(tmp_path)
    check, first = check_slices(groups)
    assert groups == {} and check.status == WARN and first is None
    assert check_spacing(tmp_path, groups).status == WARN
    (tmp_path / "slice_00001.tif").write_bytes(b"this is not a TIFF at all")
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "~slice_00002.tif").write_bytes(b"temporary: ignored")
    groups = find_slices(tmp_path)
    assert [p.name for p in groups[tmp_path]] == ["slice_00001.tif"]
    check, first = check_slices(groups)
    assert check.status == WARN and "cannot be read" in check.detail and "not a TIFF" in check.detail
    assert first is None


# -- volume ---------------------------------------------------------------------------------


def test_volume_location_writable_and_not(tmp_path):
    ok = check_volume_writable(tmp_path / "v.ome.zarr")
    assert ok.status == OK and str(tmp_path) in ok.detail
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    nested = check_volume_writable(tmp_path / "new" / "deeper" / "v.ome.zarr")
    assert nested.status == OK and "will be created" in nested.detail
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert check_volume_writable(blocker / "v.ome.zarr").status == FAIL


@pytest.mark.skipif(ROOT or os.name == "nt", reason="root writes anywhere; POSIX permissions needed")
def test_read_only_volume_folder_fails(tmp_path):
    tmp_path.chmod(0o555)
    try:
        c = check_volume_writable(tmp_path / "v.ome.zarr")
    finally:
        tmp_path.chmod(0o755)
    assert c.status == FAIL and "cannot create a file" in c.detail


def test_volume_resume(tmp_path):
    path = tmp_path / "v.ome.zarr"
    absent, store = check_volume_resume(path)
    assert absent.status == OK and store is None and "new volume" in absent.detail
    rng = np.random.default_rng(0)
    with VolumeStore.create(path, canvas_shape=(32, 48), dtype=np.uint16, spacing_um=(0.05, 0.02, 0.02),
                            phases=Phases(("pore", "electrolyte", "active"))) as vol:
        for i in range(1, 4):
            vol.append(i, rng.integers(0, 60000, (32, 48), dtype=np.uint16), rng.integers(0, 4, (32, 48), dtype=np.uint8))
    check, store = check_volume_resume(path, phase_names=["pore", "electrolyte", "active"])
    assert check.status == OK and "3 slices of 32 x 48 uint16" in check.detail
    assert store.depth == 3 and store.canvas_shape == (32, 48)
    other, _ = check_volume_resume(path, phase_names=["pore", "active"])
    assert other.status == FAIL and "differ" in other.detail
    junk = tmp_path / "junk.ome.zarr"
    junk.mkdir()
    (junk / "hello.txt").write_text("x")
    bad, store = check_volume_resume(junk)
    assert bad.status == FAIL and store is None and "not a revwatch volume" in bad.detail


def test_expected_volume_bytes_arithmetic():
    # grey uint16 (2 B) + labels uint8 (1 B) per pixel.
    assert expected_volume_bytes((1024, 1536), "uint16", 2000) == 1024 * 1536 * 3 * 2000
    assert expected_volume_bytes((1024, 1536), np.uint8, 2000) == 1024 * 1536 * 2 * 2000
    assert expected_volume_bytes((10, 10), np.uint16, 0) == 0
    with pytest.raises(ValueError, match="slice_shape"):
        expected_volume_bytes((0, 10), np.uint16, 1)
    with pytest.raises(ValueError, match="slices"):
        expected_volume_bytes((10, 10), np.uint16, -1)


def test_free_disk_against_the_estimate(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    small = check_disk(tmp_path / "v.ome.zarr", slice_shape=(64, 64), dtype=np.uint8, expected_slices=10)
    assert small.status == OK and "10 more slices of 64 x 64 uint8" in small.detail
    # Slices of 2 GB each: the drive cannot hold 10**6 of them.
    shape = (32768, 32768)
    huge = check_disk(tmp_path / "v.ome.zarr", slice_shape=shape, dtype=np.uint16, expected_slices=10**6)
    assert huge.status == FAIL
    room = int(re.search(r"room for about (\d+) slices", huge.detail).group(1))
    per_slice = expected_volume_bytes(shape, np.uint16, 1) * 1.2
    assert abs(room - free / per_slice) <= max(2, 0.01 * free / per_slice)
    # Resuming a volume that already holds them all needs nothing more.
    done = check_disk(tmp_path / "v.ome.zarr", slice_shape=shape, dtype=np.uint16, expected_slices=100,
                      done_slices=100)
    assert done.status == OK and "0 more slices" in done.detail
    unknown = check_disk(tmp_path / "v.ome.zarr")
    assert unknown.status == WARN and "no slice yet" in unknown.detail


# -- publishing -----------------------------------------------------------------------------


def test_port_in_use_fails_and_free_port_ok():
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", 0))
        occupier.listen(1)
        port = occupier.getsockname()[1]
        busy = check_port(f"tcp://127.0.0.1:{port}")
        assert busy.status == FAIL and "already in use" in busy.detail
    free = check_port(f"tcp://127.0.0.1:{port}")
    assert free.status == OK
    # The check released the port: it can be bound again at once.
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))


def test_port_on_an_address_this_machine_lacks_fails():
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never assigned to a real interface.
    c = check_port("tcp://192.0.2.1:5556")
    assert c.status == FAIL and "cannot bind" in c.detail


def test_publish_security(tmp_path):
    assert check_publish_security(_publish(endpoint='"tcp://127.0.0.1:5556"')).status == OK
    exposed = check_publish_security(_publish(endpoint='"tcp://0.0.0.0:5556"'))
    assert exposed.status == FAIL and "revwatch keys" in exposed.fix
    insecure = check_publish_security(_publish(endpoint='"tcp://0.0.0.0:5556"', insecure="true"))
    assert insecure.status == WARN and "WITHOUT encryption" in insecure.detail
    keys = tmp_path / "keys"
    create_keys(keys, clients=("monitor", "lab"))
    curve = check_publish_security(_publish(endpoint='"tcp://0.0.0.0:5556"', keys_dir=f'"{keys}"'))
    assert curve.status == OK and "2 client key(s)" in curve.detail
    (tmp_path / "empty").mkdir()
    no_keys = check_publish_security(_publish(endpoint='"tcp://0.0.0.0:5556"', keys_dir=f'"{tmp_path / "empty"}"'))
    assert no_keys.status == FAIL and "cannot be used" in no_keys.detail
    no_port = check_publish_security(_publish(endpoint='"tcp://127.0.0.1"'))
    assert no_port.status == FAIL


# -- compute --------------------------------------------------------------------------------


def test_scheduler_none_unreachable_and_local_cluster():
    assert check_scheduler(None).status == OK
    down = check_scheduler(f"tcp://127.0.0.1:{_free_port()}", timeout_s=1.0)
    assert down.status == FAIL and "not reachable" in down.detail
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp://",
                                  host="127.0.0.1", dashboard_address=":0") as cluster:
        up = check_scheduler(cluster.scheduler_address, timeout_s=10.0)
    assert up.status == OK, up
    assert "1 worker(s), 1 threads, versions match" in up.detail


def test_scheduler_worker_that_does_not_see_the_volume(tmp_path):
    """A worker in its own mount namespace, with an empty tmpfs over the volume's storage."""
    distributed = pytest.importorskip("distributed")
    unshare = shutil.which("unshare")
    if unshare is None or sys.platform != "linux":
        pytest.skip("needs Linux unshare(1)")
    probe = subprocess.run([unshare, "--mount", "--propagation", "private", "sh", "-c",
                            f"mount -t tmpfs none {tmp_path}"], capture_output=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {probe.stderr.decode().strip()}")
    storage = tmp_path / "volumes"
    storage.mkdir()
    volume = storage / "v.ome.zarr"
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with distributed.LocalCluster(n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1",
                                  dashboard_address=":0") as cluster:
        worker = subprocess.Popen(
            [unshare, "--mount", "--propagation", "private", "sh", "-c",
             f'mount -t tmpfs none "{tmp_path}" && exec "{sys.executable}" -m distributed.cli.dask_worker '
             f"{cluster.scheduler_address} --nthreads 1 --no-dashboard"],
            cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with distributed.Client(cluster.scheduler_address, set_as_default=False) as client:
                client.wait_for_workers(1, timeout=60)
            blind = check_scheduler(cluster.scheduler_address, timeout_s=10.0, volume=volume)
            sees_tmp = check_scheduler(cluster.scheduler_address, timeout_s=10.0, volume=tmp_path / "v.ome.zarr")
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    assert blind.status == FAIL and f"1 worker(s) do not see {storage}" in blind.detail, blind
    # The mount point itself exists on the worker too (an empty tmpfs): that folder is seen.
    assert sees_tmp.status == OK and "all see the volume's folder" in sees_tmp.detail, sees_tmp


def test_packages_and_machine():
    import psutil

    packages = check_packages()
    assert f"numpy {np.__version__}" in packages.detail
    missing = [dist for module, dist in PACKAGES if importlib.util.find_spec(module) is None]
    assert packages.status == (FAIL if missing else OK)
    machine = check_machine()
    assert f"{os.cpu_count()} logical CPUs" in machine.detail
    assert f"of {psutil.virtual_memory().total / (1 << 30):.1f} GiB" in machine.detail


def test_check_refuses_unknown_status():
    with pytest.raises(ValueError, match="status"):
        Check("x", "MAYBE", "")


# -- all together ---------------------------------------------------------------------------


def _config(folder, volume, port, *extra):
    return load_config(None, [f'acquisition.folder="{folder}"', f'volume.path="{volume}"',
                              f'publish.endpoint="tcp://127.0.0.1:{port}"', *extra])


def test_run_doctor_ready_then_port_taken(small_fei_project, tmp_path):
    port = _free_pair()
    config = _config(small_fei_project, tmp_path / "v.ome.zarr", port)
    checks = doctor_checks(config, expected_slices=50)
    names = [c.name for c in checks]
    assert names == ["acquisition folder", "detector", "slices", "slice spacing", "phase model", "volume location", "volume resume", "free disk",
                     "publish security", "publish port", "snapshot port", "dask scheduler", "python packages",
                     "machine"]
    disk = checks[names.index("free disk")]
    assert "50 more slices of 128 x 128 uint8" in disk.detail
    console = Console(record=True, width=200)
    expected = 1 if any(c.status == FAIL for c in checks) else 0
    assert run_doctor(config, console=console, expected_slices=50) == expected
    text = console.export_text()
    assert "revwatch doctor" in text and "acquisition folder" in text
    if expected == 0:
        assert "ready" in text
    # Another program on the snapshot port (PUB + 1): the doctor says so and fails.
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", port + 1))
        occupier.listen(1)
        console = Console(record=True, width=200)
        assert run_doctor(config, console=console) == 1
    text = console.export_text()
    assert f"tcp://127.0.0.1:{port + 1} is already in use" in text
    assert re.search(r"to fix:.*snapshot port", text)


def test_run_doctor_missing_folder(tmp_path):
    config = _config(tmp_path / "not-there", tmp_path / "v.ome.zarr", _free_pair())
    console = Console(record=True, width=200)
    assert run_doctor(config, console=console) == 1
    checks = doctor_checks(config)
    assert checks[0].status == FAIL and "slices" not in [c.name for c in checks]
    with pytest.raises(ValueError, match="expected_slices"):
        doctor_checks(config, expected_slices=0)


def test_cli_exit_code_and_table(small_fei_project, tmp_path):
    """`revwatch doctor` as a user runs it: a separate process, the exit code, the table."""
    port = _free_pair()
    args = [sys.executable, "-m", "agent.cli", "doctor",
            "--set", f'acquisition.folder="{small_fei_project}"',
            "--set", f'volume.path="{tmp_path / "v.ome.zarr"}"',
            "--set", f'publish.endpoint="tcp://127.0.0.1:{port}"']
    env = {**os.environ, "COLUMNS": "200"}
    with socket.socket() as occupier:
        occupier.bind(("127.0.0.1", port))
        occupier.listen(1)
        result = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env,
                                cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 1, result.stderr
    assert f"tcp://127.0.0.1:{port} is already in use" in result.stdout
    assert "50 nm (EMProject.emxml" in result.stdout
