"""agent.analysis: incremental Table 1 over a growing Zarr volume, threads or a cluster."""

import threading

import numpy as np
import pytest
import zarr
from numpy.testing import assert_allclose
from scipy import ndimage

from agent.analysis import VolumeAnalysis, rev_values
from processing.metrics import count_volume, counts_metrics, table1

SPACING = (0.05, 0.02, 0.02)
CHEAP = ("volume_fraction", "surface_area_per_cell_volume_um-1", "surface_area_per_phase_volume_um-1",
         "coverage_share")


def composite(shape, seed):
    """Electrolyte-rich 3-phase composite (every phase percolates in y)."""
    rng = np.random.default_rng(seed)
    a = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    b = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    labels = np.full(shape, 2, np.uint8)
    labels[a > np.quantile(a, 0.55)] = 3
    labels[(labels == 2) & (b > np.quantile(b, 0.7))] = 1
    labels[0, :2, :3] = 0
    return labels


class ReadLog:
    """Array-like over a NumPy volume that records the z ranges read."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.ndim = data, data.shape, data.dtype, 3
        self.reads = []

    def __getitem__(self, key):
        z = key[0] if isinstance(key, tuple) else key
        self.reads.append((z.start, z.stop))
        return self.data[key]


@pytest.fixture
def zarr_volume(tmp_path):
    labels = composite((64, 48, 40), 0)
    arr = zarr.create_array(tmp_path / "labels.zarr", shape=(0, 48, 40), chunks=(1, 48, 40), dtype="uint8")
    return labels, arr


def grow(arr, labels, depth):
    start = arr.shape[0]
    arr.resize((depth, *labels.shape[1:]))
    arr[start:depth] = labels[start:depth]


def test_incremental_cheap_metrics_equal_full_recount(zarr_volume):
    labels, arr = zarr_volume
    with VolumeAnalysis(arr, spacing_um=SPACING, expensive_every_slices=16, halo_slices=4) as va:
        for depth in (1, 7, 8, 30, 45, 64):
            grow(arr, labels, depth)
            doc = va.update(depth)
            full = counts_metrics(count_volume(labels[:depth]), spacing_um=SPACING)
            assert doc["depth_slices"] == depth
            for field in CHEAP:
                for name, value in full[field].items():
                    assert doc[field][name] == pytest.approx(value, rel=1e-12, abs=0) if value else \
                        doc[field][name] == value


def test_update_reads_only_new_slices_for_the_cheap_metrics():
    labels = composite((80, 32, 32), 1)
    source = ReadLog(labels)
    va = VolumeAnalysis(source, spacing_um=SPACING, expensive_every_slices=16, halo_slices=1, windows_per_update=3)
    va.update(50)  # windows [0, 48) done
    source.reads.clear()
    va.update(66)
    # counting reads [49, 66) (the new slices and the one before them); the one new
    # window [48, 64) reads its halo from 47: nothing before, whatever the depth
    read_slices = set()
    for start, stop in source.reads:
        read_slices.update(range(start, stop))
    assert read_slices == set(range(47, 66))


def test_a_backlog_of_windows_is_worked_off_a_few_per_update():
    labels = composite((80, 32, 32), 1)
    source = ReadLog(labels)
    va = VolumeAnalysis(source, spacing_um=SPACING, expensive_every_slices=16, halo_slices=1, windows_per_update=2)
    doc = va.update(80)  # a burst: 4 windows are final, 2 are computed now
    assert doc["expensive_windows"] == 2 and doc["expensive_depth_slices"] == 32
    assert max(stop for start, stop in source.reads) == 80  # the counts are exact for the whole depth
    slabs = {(max(z - 1, 0), z + 16) for z in range(0, 80, 16)}
    assert {r for r in source.reads if r not in slabs} == {(0, 17), (15, 33)}  # two windows and their halo
    assert va.update(80)["expensive_windows"] == 4
    full = va.update(80, full=True)
    assert full["expensive_depth_slices"] == 80
    whole = VolumeAnalysis(labels, spacing_um=SPACING, expensive_every_slices=16, halo_slices=1, windows_per_update=10)
    assert full["tortuosity_geometric"] == whole.update(80, full=True)["tortuosity_geometric"]


class GatedWindows(ReadLog):
    """ReadLog whose reads longer than a count slab (the expensive windows) wait for `gate`."""

    def __init__(self, data, gate, slab_reads):
        super().__init__(data)
        self.gate, self.slab_reads = gate, slab_reads

    def __getitem__(self, key):
        z = key[0] if isinstance(key, tuple) else key
        if z.stop - z.start > self.slab_reads:
            assert self.gate.wait(60)
        return super().__getitem__(key)


def test_background_windows_do_not_hold_up_the_cheap_metrics():
    labels = composite((80, 32, 32), 1)
    gate, finished = threading.Event(), threading.Event()
    # count slabs read 17 slices, windows 16 + 2 x 4 halo
    source = GatedWindows(labels, gate, slab_reads=17)
    va = VolumeAnalysis(source, spacing_um=SPACING, expensive_every_slices=16, halo_slices=4, windows_per_update=2,
                        background=True, on_windows_done=finished.set)
    doc = va.update(80)  # a burst: the windows are started and left running
    assert doc["volume_fraction"] == counts_metrics(count_volume(labels), spacing_um=SPACING)["volume_fraction"]
    assert doc["expensive_windows"] == 0 and doc["expensive_depth_slices"] == 0 and va.windows_pending
    gate.set()
    assert finished.wait(60)
    doc = va.update(80)  # merges windows 0 and 1, starts 2 and 3
    assert doc["expensive_windows"] == 2 and doc["expensive_depth_slices"] == 32
    full = va.update(80, full=True)
    va.close()
    same = VolumeAnalysis(labels, spacing_um=SPACING, expensive_every_slices=16, halo_slices=4, windows_per_update=2)
    assert full == same.update(80, full=True)


def test_closing_abandons_background_windows_at_once():
    labels = composite((80, 32, 32), 1)
    gate = threading.Event()
    va = VolumeAnalysis(GatedWindows(labels, gate, slab_reads=17), spacing_um=SPACING, expensive_every_slices=16,
                        halo_slices=4, background=True)
    va.update(80)
    assert va.windows_pending
    closer = threading.Thread(target=va.close)
    closer.start()
    closer.join(10)  # the windows wait for the gate, which is never opened before close returns
    assert not closer.is_alive() and not va.windows_pending
    gate.set()


def test_windowed_expensive_metrics_close_to_whole_volume():
    labels = composite((96, 64, 64), 2)
    va = VolumeAnalysis(labels, spacing_um=SPACING, expensive_every_slices=32, halo_slices=8)
    doc = va.update(96, full=True)
    ref = table1(labels, spacing_um=SPACING)
    assert doc["expensive_depth_slices"] == 96
    for key in ("y+", "y-"):
        assert_allclose(doc["tortuosity_geometric"]["electrolyte"][key],
                        ref["tortuosity_geometric"]["electrolyte"][key], rtol=0.05)
    assert_allclose(doc["local_thickness_um"]["electrolyte"]["mean"],
                    ref["local_thickness_um"]["electrolyte"]["mean"], rtol=0.03)
    assert doc["connected_share"]["active"] == pytest.approx(ref["connected_share"]["active"], abs=0.03)
    assert doc["interconnected_share"]["pore"] <= ref["interconnected_share"]["pore"] + 1e-9
    values = rev_values(doc)
    assert values["volume_fraction.pore"] == doc["volume_fraction"]["pore"]
    assert values["tortuosity_geometric.electrolyte.y+"] == doc["tortuosity_geometric"]["electrolyte"]["y+"]


def test_dask_array_input_and_bad_arguments():
    da = pytest.importorskip("dask.array")
    labels = composite((20, 24, 24), 3)
    doc = VolumeAnalysis(da.from_array(labels, chunks=(4, 24, 24)), spacing_um=SPACING).update(20)
    ref = counts_metrics(count_volume(labels), spacing_um=SPACING)
    assert doc["volume_fraction"] == ref["volume_fraction"]
    with pytest.raises(ValueError, match="scheduler"):
        VolumeAnalysis(labels, spacing_um=SPACING, scheduler="localhost:8786")
    with pytest.raises(ValueError, match="expensive_every_slices"):
        VolumeAnalysis(labels, spacing_um=SPACING, expensive_every_slices=0)
    va = VolumeAnalysis(labels, spacing_um=SPACING)
    va.update(10)
    with pytest.raises(ValueError, match="only grow"):
        va.update(5)


def test_distributed_cluster_gives_the_same_numbers(zarr_volume):
    distributed = pytest.importorskip("distributed")
    labels, arr = zarr_volume
    grow(arr, labels, 40)
    local = VolumeAnalysis(arr, spacing_um=SPACING, expensive_every_slices=16, halo_slices=4).update(40, full=True)
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  host="127.0.0.1") as cluster:
        with VolumeAnalysis(arr, spacing_um=SPACING, expensive_every_slices=16, halo_slices=4,
                            scheduler=cluster.scheduler_address) as va:
            remote = va.update(40, full=True)
    assert remote == local


def test_whole_volume_table1_equals_table1_and_runs_on_a_cluster(tmp_path):
    from agent.analysis import whole_volume_table1

    labels = composite((40, 36, 32), 4)
    labels[:, :5] = 0  # a cap on the current-collector face
    arr = zarr.create_array(tmp_path / "v.zarr", shape=labels.shape, chunks=(8, 36, 32), dtype="uint8")
    arr[:] = labels
    kwargs = dict(spacing_um=SPACING, chunk_voxels=36 * 32 * 12, halo_slices=6)
    ref = table1(labels, **kwargs)
    local = whole_volume_table1(arr, **kwargs)
    assert local == ref  # same chunks, same numbers: reading from Zarr and Dask change nothing
    assert local["connected_share"]["active"] > 0.5
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                                  host="127.0.0.1") as cluster:
        remote = whole_volume_table1(arr, scheduler=cluster.scheduler_address, **kwargs)
    assert remote == local


def test_windows_join_components_across_their_faces():
    # a phase that is one connected whole only through several windows
    labels = np.full((48, 20, 12), 2, np.uint8)
    labels[:, 0:3, 2:5] = 3        # touches the current collector
    labels[40:48, 0:12, 2:5] = 3   # joins it to the far arm in the last window
    labels[:, 9:12, 2:5] = 3       # far arm
    va = VolumeAnalysis(labels, spacing_um=(1, 1, 1), expensive_every_slices=16, halo_slices=2)
    doc = va.update(48, full=True)
    assert doc["connected_share"]["active"] == pytest.approx(1.0)
    assert doc["connected_share"]["active"] == table1(labels, spacing_um=(1, 1, 1))["connected_share"]["active"]
