"""processing.io: names, metadata round trips, and refusing incomplete files."""

from datetime import datetime

import numpy as np
import pytest
import tifffile
from numpy.testing import assert_allclose

from processing.errors import SliceReadError
from processing.io import (
    is_slice_file,
    read_fei_project_spacing_um,
    read_slice,
    slice_file_name,
    slice_index_from_name,
    write_fei_project,
    write_slice,
    z_um_from_name,
)


@pytest.mark.parametrize(
    "name, index",
    [
        ("SEM Image - SliceImage - 001.tif", 1),
        ("SEM Image 2 - SliceImage - 1234.tif", 1234),
        ("slice_00100_z=1.0894um.tif", 100),
        ("slice_00007_z=-0.0200um.TIF", 7),
        ("anything_0042.tif", 42),
        ("img42.tiff", 42),
        ("sample-003", 3),
        ("overview.tif", None),
        ("run3_final.tif", None),
        ("Thumbs.db", None),
    ],
)
def test_slice_index_from_name(name, index):
    assert slice_index_from_name(name) == index


@pytest.mark.parametrize(
    "name, z",
    [
        ("slice_00100_z=1.0894um.tif", 1.0894),
        ("slice_00001_z=0.0000um.tif", 0.0),
        ("slice_00002_z=25.0nm.tif", 0.025),
        ("slice_00003_z=-0.5µm.tif", -0.5),
        ("SEM Image - SliceImage - 001.tif", None),
        ("size_z=3.tif", None),
    ],
)
def test_z_um_from_name(name, z):
    result = z_um_from_name(name)
    if z is None:
        assert result is None
    else:
        assert_allclose(result, z)


@pytest.mark.parametrize(
    "name, ok",
    [
        ("SEM Image - SliceImage - 001.tif", True),
        ("slice_00001_z=0.0000um.TIFF", True),
        ("x.Tif", True),
        ("x.tif.part", False),
        ("x.tif.tmp", False),
        ("x.tmp", False),
        ("Thumbs.db", False),
        ("~$x.tif", False),
        ("~x.tif", False),
        (".x.tif", False),
        ("x-tif.hdr", False),
        ("EMProject.emxml", False),
    ],
)
def test_is_slice_file(name, ok):
    assert is_slice_file(name) is ok


def test_file_names_follow_instruments():
    assert slice_file_name(1, layout="fei") == "SEM Image - SliceImage - 001.tif"
    assert slice_file_name(1000, layout="fei") == "SEM Image - SliceImage - 1000.tif"
    assert slice_file_name(3, layout="zeiss", z_um=0.1) == "slice_00003_z=0.1000um.tif"
    with pytest.raises(ValueError, match="z_um"):
        slice_file_name(3, layout="zeiss")
    with pytest.raises(ValueError, match="layout"):
        slice_file_name(3, layout="jeol")


def _pixels(dtype, shape=(37, 53), seed=0):
    return np.random.default_rng(seed).integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize(
    "layout, written, expected",
    [
        ("fei", (0.0123, 0.0101), (0.0123, 0.0101)),
        ("zeiss", 0.0037, (0.0037, 0.0037)),
        ("tescan", (0.25, 0.5), (0.25, 0.5)),
    ],
)
def test_round_trip_pixels_and_pixel_size(tmp_path, dtype, layout, written, expected):
    pixels = _pixels(dtype)
    path = write_slice(tmp_path, 12, pixels, layout=layout, pixel_size_um=written, z_um=1.25)
    s = read_slice(path)
    assert s.pixels.dtype == dtype
    assert np.array_equal(s.pixels, pixels)
    assert s.index == 12
    assert s.source == str(path)
    assert_allclose(s.pixel_size_um, expected, rtol=1e-6)
    assert s.z_um == (1.25 if layout == "zeiss" else None)


def test_metadata_readable_by_tifffile(tmp_path):
    # What other tools see: tifffile parses our tags as the instruments' tags.
    fei = write_slice(tmp_path, 1, _pixels(np.uint8), layout="fei", pixel_size_um=0.02)
    with tifffile.TiffFile(fei) as tif:
        assert_allclose(tif.fei_metadata["Scan"]["PixelWidth"], 2e-8)
        assert_allclose(tif.fei_metadata["EScan"]["PixelHeight"], 2e-8)
    zeiss = write_slice(tmp_path, 1, _pixels(np.uint8), layout="zeiss", pixel_size_um=0.02, z_um=0.0)
    with tifffile.TiffFile(zeiss) as tif:
        name, value, unit = tif.sem_metadata["ap_image_pixel_size"]
        assert (value, unit) == (20.0, "nm")


@pytest.mark.parametrize("unit, factor", [("nm", 1e-3), ("µm", 1.0), ("um", 1.0), ("pm", 1e-6)])
def test_zeiss_units(tmp_path, unit, factor):
    text = f"0\r\nAP_IMAGE_PIXEL_SIZE\r\nImage Pixel Size = 7.5 {unit}\r\nEND\r\n".encode("cp1252")
    path = tmp_path / "slice_00001_z=0.0000um.tif"
    tifffile.imwrite(path, _pixels(np.uint8), extratags=[(34118, "B", 0, text, True)], metadata=None)
    assert_allclose(read_slice(path).pixel_size_um, (7.5 * factor, 7.5 * factor))


def test_no_metadata_gives_no_pixel_size(tmp_path):
    path = tmp_path / "plain_0005.tif"
    tifffile.imwrite(path, _pixels(np.uint16))
    s = read_slice(path)
    assert s.pixel_size_um is None and s.z_um is None and s.index == 5


def test_implausible_pixel_size_ignored(tmp_path):
    path = write_slice(tmp_path, 1, _pixels(np.uint8), layout="tescan", pixel_size_um=0.02)
    path.with_name(f"{path.stem}-tif.hdr").write_text("[MAIN]\nPixelSizeX=0\n")
    assert read_slice(path).pixel_size_um is None


def test_fei_project_spacing(tmp_path):
    write_fei_project(tmp_path, slice_spacing_um=0.03)
    images = tmp_path / "Images" / "SEM Image"
    images.mkdir(parents=True)
    assert_allclose(read_fei_project_spacing_um(tmp_path), 0.03)
    assert_allclose(read_fei_project_spacing_um(images), 0.03)  # found from the image folder too
    assert read_fei_project_spacing_um(tmp_path.parent / "no_project_here") is None
    # A real project file carries a namespace and many more elements.
    (tmp_path / "EMProject.emxml").write_text(
        '<?xml version="1.0"?><Project xmlns="http://schemas.fei.com/x"><Jobs><Job>'
        "<ZCutSpacing>2.5E-08</ZCutSpacing></Job></Jobs></Project>"
    )
    assert_allclose(read_fei_project_spacing_um(tmp_path), 0.025)
    (tmp_path / "EMProject.emxml").write_text("<Project><ZCutSpacing>")
    assert read_fei_project_spacing_um(tmp_path) is None


@pytest.mark.parametrize("layout", ["fei", "zeiss"])
def test_truncated_files_raise_naming_the_file(tmp_path, layout):
    # A file caught while the microscope is still writing it must fail,
    # never come back as a partly zero image.
    path = write_slice(tmp_path, 1, _pixels(np.uint16, (64, 80)), layout=layout, pixel_size_um=0.02, z_um=0.0)
    data = path.read_bytes()
    cuts = sorted({0, 1, 3, 4, 8, 9, 50, 200, len(data) // 3, len(data) // 2, len(data) - 100, len(data) - 1})
    for cut in cuts:
        partial = tmp_path / f"partial_{cut:06d}.tif"
        partial.write_bytes(data[:cut])
        with pytest.raises(SliceReadError) as info:
            read_slice(partial)
        assert info.value.path == str(partial)
        assert partial.name in str(info.value)
        assert info.value.reason


def test_truncated_compressed_file_raises(tmp_path):
    path = tmp_path / "slice_0001.tif"
    tifffile.imwrite(path, _pixels(np.uint8, (128, 128)), compression="zlib")
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10):
        partial = tmp_path / f"partial_{cut:06d}.tif"
        partial.write_bytes(data[:cut])
        with pytest.raises(SliceReadError):
            read_slice(partial)


def test_unreadable_files_raise_with_reason(tmp_path):
    missing = tmp_path / "slice_0001.tif"
    with pytest.raises(SliceReadError, match="does not exist"):
        read_slice(missing)
    empty = tmp_path / "slice_0002.tif"
    empty.write_bytes(b"")
    with pytest.raises(SliceReadError, match="empty"):
        read_slice(empty)
    text = tmp_path / "slice_0003.tif"
    text.write_text("this is a log file, not an image\n")
    with pytest.raises(SliceReadError, match="not a TIFF"):
        read_slice(text)
    reserved = tmp_path / "slice_0005.tif"
    reserved.write_bytes(bytes(5000))  # preallocated on a share, not yet filled
    with pytest.raises(SliceReadError, match="still being written"):
        read_slice(reserved)
    png = tmp_path / "slice_0004.tif"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(SliceReadError, match="not a TIFF"):
        read_slice(png)
    no_index = tmp_path / "overview.tif"
    tifffile.imwrite(no_index, _pixels(np.uint8))
    with pytest.raises(SliceReadError, match="index"):
        read_slice(no_index)
    assert read_slice(no_index, index=4).index == 4


def test_multipage_is_an_error_naming_the_count(tmp_path):
    path = tmp_path / "stack_0001.tif"
    tifffile.imwrite(path, np.zeros((5, 16, 16), np.uint8))
    with pytest.raises(SliceReadError, match="5 images"):
        read_slice(path)


def test_thumbnail_page_is_ignored(tmp_path):
    path = tmp_path / "slice_0001.tif"
    pixels = _pixels(np.uint8, (64, 64))
    with tifffile.TiffWriter(path) as tw:
        tw.write(pixels)
        tw.write(pixels[::4, ::4], subfiletype=1)  # reduced-resolution image
    assert np.array_equal(read_slice(path).pixels, pixels)


def test_rgb_rule(tmp_path):
    grey = _pixels(np.uint8, (20, 30))
    same = tmp_path / "same_0001.tif"
    tifffile.imwrite(same, np.stack([grey] * 3, axis=-1), photometric="rgb")
    assert np.array_equal(read_slice(same).pixels, grey)
    colour = np.zeros((20, 30, 3), np.uint8)
    colour[..., 0], colour[..., 1], colour[..., 2] = 200, 100, 50
    path = tmp_path / "colour_0001.tif"
    tifffile.imwrite(path, colour, photometric="rgb")
    expected = round(0.299 * 200 + 0.587 * 100 + 0.114 * 50)
    assert np.all(read_slice(path).pixels == expected)
    rgba = np.concatenate([colour, np.full((20, 30, 1), 255, np.uint8)], axis=-1)
    path = tmp_path / "rgba_0001.tif"
    tifffile.imwrite(path, rgba, photometric="rgb", extrasamples=["unassalpha"])
    assert np.all(read_slice(path).pixels == expected)


def test_float_pixels_refused(tmp_path):
    path = tmp_path / "float_0001.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.float32))
    with pytest.raises(SliceReadError, match="pixel type"):
        read_slice(path)


def test_write_slice_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="pixels"):
        write_slice(tmp_path, 1, np.zeros((2, 4, 4), np.uint8), pixel_size_um=0.02)
    with pytest.raises(ValueError, match="pixel_size_um"):
        write_slice(tmp_path, 1, np.zeros((4, 4), np.uint8), pixel_size_um=-1)


def test_fibics_xml_pixel_size(tmp_path):
    xml = ('<?xml version="1.0"?><Fibics version="1.0"><Scan><FOV_X units="um">10.0</FOV_X>'
           "<Ux>0.005</Ux><Uy>0</Uy><Vx>0</Vx><Vy>-0.006</Vy></Scan></Fibics>")
    path = tmp_path / "slice_00001_z=0.0000um.tif"
    tifffile.imwrite(path, _pixels(np.uint8), extratags=[(51023, "s", 0, xml, True)], metadata=None)
    assert_allclose(read_slice(path).pixel_size_um, (0.006, 0.005))


def test_fei_information_bar_dropped(tmp_path):
    from processing.io import _fei_helios_text

    scan = _pixels(np.uint8, (40, 50))
    with_bar = np.concatenate([scan, np.full((12, 50), 255, np.uint8)])
    text = _fei_helios_text(scan.shape, 2e-8, 2e-8, datetime.now())
    path = tmp_path / "SEM Image - SliceImage - 001.tif"
    tifffile.imwrite(path, with_bar, extratags=[(34682, "s", 0, text, True)], metadata=None)
    assert np.array_equal(read_slice(path).pixels, scan)


def test_grey_alpha_takes_grey(tmp_path):
    grey = _pixels(np.uint8, (20, 30))
    la = np.stack([grey, np.full_like(grey, 255)], axis=-1)
    path = tmp_path / "la_0001.tif"
    tifffile.imwrite(path, la, photometric="minisblack", extrasamples=["unassalpha"], planarconfig="contig")
    assert np.array_equal(read_slice(path).pixels, grey)


@pytest.mark.parametrize("options", [{"bigtiff": True}, {"byteorder": ">"}, {"compression": "zlib"}, {"tile": (32, 32)}])
def test_other_tiff_flavours(tmp_path, options):
    pixels = _pixels(np.uint16, (64, 96))
    path = tmp_path / "slice_0009.tif"
    tifffile.imwrite(path, pixels, **options)
    s = read_slice(path)
    assert s.index == 9 and np.array_equal(s.pixels, pixels)
    data = path.read_bytes()
    (tmp_path / "slice_0010.tif").write_bytes(data[: len(data) - 64])
    with pytest.raises(SliceReadError):
        read_slice(tmp_path / "slice_0010.tif")


def test_missing_codec_named(tmp_path):
    pytest.importorskip("zlib")
    try:
        import imagecodecs  # noqa: F401
        pytest.skip("imagecodecs is installed: every codec is available")
    except ImportError:
        pass
    path = tmp_path / "slice_0001.tif"
    tifffile.imwrite(path, _pixels(np.uint8, (32, 32)), compression="zlib")
    data = bytearray(path.read_bytes())
    # Relabel the Compression tag (259, SHORT, 1) from Adobe deflate (8) to LZW (5).
    entry = (259).to_bytes(2, "little") + (3).to_bytes(2, "little") + (1).to_bytes(4, "little")
    at = data.index(entry) + len(entry)
    assert data[at] == 8
    data[at] = 5
    path.write_bytes(bytes(data))
    with pytest.raises(SliceReadError, match="imagecodecs"):
        read_slice(path)
