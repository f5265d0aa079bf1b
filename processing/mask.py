"""The valid region of a slice: the pixels that show the sample.

Everything else (protective cap, surface view, fiducial, black margins, the outside of a
circular field, the borders uncovered by drift) is labelled 0 (unassigned) and so left out of
every metric's denominator and of the phase calibration.

Found automatically here: *flat margins*, regions of (nearly) constant grey touching the border
of the slice (black margins, the digital fill outside a circular field or a reconstruction).
A constant region is not sample (sample has noise); a saturated phase is, so regions at the
largest value of the dtype are kept. And the *cap* (:func:`find_cap`): a band of one material on
top of the section, across the whole width, above a straight horizontal edge, in every
calibration slice. The chain adds the rows it found z-invariant (cap, fiducial band), the cap
found here when the z-invariant search finds none, and the drift borders. The user overrides with rows, rectangles, polygons or a
mask image (:class:`RegionMask`), in the frame of the slice as written by the microscope.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from processing.errors import SliceShapeError, check_slice

__all__ = ["RegionMask", "flat_margins", "grow_rows", "find_cap", "cap_of_band"]

log = logging.getLogger(__name__)


def flat_margins(pixels, *, window_px=5, flat_tol=0.01, min_area=0.002):
    """Regions of constant grey that touch the border of the slice (not sample).

    Parameters
    ----------
    pixels : (Y, X) ndarray
        A slice (raw or corrected).
    window_px : int, optional
        Side of the square window in which the grey level must be constant, pixels (>= 3).
    flat_tol : float, optional
        "Constant": grey range in the window at most this share of the slice's robust grey
        range (1st to 99th percentile).
    min_area : float, optional
        Smallest region kept, as a share of the slice (smaller flat patches are noise-free
        specks of sample).

    Returns
    -------
    (Y, X) bool ndarray
        True on the flat margins.
    """
    pixels = check_slice(pixels)
    if not (isinstance(window_px, (int, np.integer)) and window_px >= 3):
        raise ValueError(f"window_px: expected an integer >= 3, got {window_px!r}")
    if not 0 <= flat_tol < 1:
        raise ValueError(f"flat_tol: expected 0 <= t < 1, got {flat_tol!r}")
    from processing.segment import _square_reduce

    sub = pixels[::4, ::4]  # the grey range, from a sixteenth of the pixels
    lo, hi = np.percentile(sub, [1, 99])
    tol = flat_tol * max(float(hi - lo), 1e-6)
    # a margin touches the border: where no border window is flat (the usual slice), stop here
    w = window_px
    strips = (pixels[:w], pixels[-w:], pixels[:, :w].T, pixels[:, -w:].T)
    if not any(np.any((_square_reduce(b, w, np.maximum).astype(np.float32)
                       - _square_reduce(b, w, np.minimum)) <= tol) for b in strips):
        return np.zeros(pixels.shape, bool)
    native = pixels if pixels.dtype.kind in "ui" else pixels.astype(np.float32)  # reduce in the slice's own dtype
    spread = (_square_reduce(native, window_px, np.maximum).astype(np.float32)
              - _square_reduce(native, window_px, np.minimum))
    flat = spread <= tol
    values = pixels.astype(np.float32)
    if np.issubdtype(pixels.dtype, np.integer):
        flat &= pixels < np.iinfo(pixels.dtype).max  # a saturated phase is sample
    # regions of two fills that touch (a black margin beside the fill of a circular field) are
    # split by the pixels whose window sees both: join across that gap
    reach = window_px // 2 + 1
    size = 2 * reach + 1
    labels, n = ndimage.label(_square_reduce(flat.view(np.uint8), size, np.maximum))
    if n == 0:
        return np.zeros(pixels.shape, bool)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    areas = np.bincount(labels[flat], minlength=n + 1)
    keep = np.zeros(n + 1, bool)
    keep[border] = True
    keep &= areas >= min_area * pixels.size
    keep[0] = False
    out = keep[labels] & flat
    if out.any():
        # the window's reach: the flat test misses a region's outer pixels; take back those at
        # the grey level of the flat region next to them (two fills may touch: region by region)
        parts, n_parts = ndimage.label(out)
        level = np.zeros(n_parts + 1, np.float32)
        level[1:] = ndimage.mean(values, parts, index=np.arange(1, n_parts + 1))  # flat: mean = any value
        near = _square_reduce(parts.astype(np.uint16 if n_parts < 2**16 else np.int32), size, np.maximum)
        out |= (near > 0) & (np.abs(values - level[near]) <= tol)
    return out


def grow_rows(pixels, rows, *, std_tol=0.25, mean_tol=0.5):
    """Extend a band of non-sample rows (a z-invariant band found inside the cap) to the rows
    that look like it.

    A band found by comparing slices is a conservative core of the cap or fiducial strip; the rows
    around it with the same texture belong to it too. A row joins while its grey standard
    deviation is within `std_tol` (relative) of the band's median row and its mean within
    `mean_tol` times that standard deviation of the band's median row mean: the sample's rows, a
    mix of phases, have a much larger spread.

    Parameters
    ----------
    pixels : (Y, X) ndarray
        A slice in the frame of the band (the first slice of the run: the canvas).
    rows : (int, int)
        The band ``[y0, y1)``.

    Returns
    -------
    (int, int)
        The grown band.
    """
    pixels = check_slice(pixels).astype(np.float32, copy=False)
    y0, y1 = (int(v) for v in rows)
    if not 0 <= y0 < y1 <= pixels.shape[0]:
        raise ValueError(f"rows: expected 0 <= y0 < y1 <= {pixels.shape[0]}, got {rows!r}")
    means, stds = pixels.mean(axis=1), pixels.std(axis=1)
    std_ref = float(np.median(stds[y0:y1]))
    mean_ref = float(np.median(means[y0:y1]))

    def alike(y):
        return abs(stds[y] - std_ref) <= std_tol * std_ref and abs(means[y] - mean_ref) <= mean_tol * std_ref

    while y0 > 0 and alike(y0 - 1):
        y0 -= 1
    while y1 < pixels.shape[0] and alike(y1):
        y1 += 1
    return y0, y1


def _cap_edges(pixels, *, block_px, step_shares, min_rows, agree_share, level_spread, max_rows, window_px):
    """The row where a cap on top of one slice ends at each step share of `step_shares`, or None.

    In each column block, the mean grey of rows ``y..y+w`` against rows ``y-w..y``: a step there
    larger than the step share of the slice's contrast is an edge of the block. The cap's edge is
    the first row (below the top, the first rows that are not a flat margin; not beside a flat
    margin; above `max_rows`) where at least `agree_share` of the blocks step at once (a straight horizontal edge across the width: the
    edges of particles are curved), above which the blocks are of one level (interquartile spread
    at most `level_spread` of the contrast: one material, not a row of particles). The blocks'
    steps are measured once for all the shares.
    """
    values = np.asarray(pixels, dtype=np.float32)
    flat = flat_margins(pixels)
    if np.count_nonzero(~flat) < 100:
        return [None] * len(step_shares)
    contrast = _contrast(values, flat)
    smooth = ndimage.gaussian_filter(values, 1.0)
    height, width = values.shape
    n_blocks = max(1, width // block_px)
    w = int(window_px)
    steps, profiles, tops = [], [], []
    for b in range(n_blocks):
        cols = slice(b * width // n_blocks, (b + 1) * width // n_blocks)
        seen = ~flat[:, cols]
        rows = np.flatnonzero(seen.mean(axis=1) >= 0.5)
        if rows.size < 4 * w:
            continue
        profile = np.where(seen, smooth[:, cols], 0).sum(axis=1) / np.maximum(seen.sum(axis=1), 1)
        csum = np.concatenate([[0.0], np.cumsum(profile)])
        step = np.zeros(height)
        y = np.arange(w, height - w + 1)
        step[y] = np.abs(csum[y + w] - 2 * csum[y] + csum[y - w]) / w
        # the top of the block is no edge, nor a flat margin's edge (within the window and the
        # smoothing's reach of it)
        step[: int(rows[0]) + max(w + 2, min_rows)] = 0.0
        step[ndimage.binary_dilation(seen.mean(axis=1) < 0.5, iterations=w + 2)] = 0.0
        steps.append(step)
        profiles.append(profile)
        tops.append(int(rows[0]))
    if len(steps) < 2:
        return [None] * len(step_shares)
    steps = np.array(steps)

    def edge_at(step_share):
        hits = (steps > step_share * contrast).mean(axis=0)
        candidates = np.flatnonzero(hits >= agree_share)
        if candidates.size == 0:
            return None
        # the first row of steps only: below it, a row of particle edges could pass for one
        around = np.arange(int(candidates[0]), min(int(candidates[0]) + 2 * w, height))
        edge = int(around[np.argmax(np.median(steps[:, around], axis=0))])  # the centre of the step
        levels = [float(np.median(p[t:edge - w])) for p, t in zip(profiles, tops) if edge - w - t >= min_rows]
        if edge > max_rows:
            return None
        return edge if _of_one_level(levels, level_spread * contrast) else None

    return [edge_at(share) for share in step_shares]


def _contrast(values, flat):
    """The slice's contrast: its 5th to 95th percentile outside the flat margins (from at most
    65536 pixels)."""
    sample = values[~flat]
    lo, hi = np.percentile(sample[:: max(1, sample.size // 65536)], [5, 95])
    return max(float(hi - lo), 1e-6)


def _of_one_level(levels, spread):
    """Whether the column blocks' `levels` (two at least) are one material: their interquartile
    spread at most `spread` (grey units)."""
    if len(levels) < 2:
        return False
    q25, q75 = np.percentile(levels, [25, 75])
    return bool(q75 - q25 <= spread)


def _one_level(pixels, rows, *, block_px, level_spread):
    """Whether rows ``[y0, y1)`` of a slice are of one grey level across the width, as above a
    cap's edge: the median grey of their column blocks (flat margins left out) within
    `level_spread` of the slice's contrast (:func:`_of_one_level`)."""
    values = np.asarray(pixels, dtype=np.float32)
    flat = flat_margins(pixels)
    band, inside = values[rows[0]:rows[1]], ~flat[rows[0]:rows[1]]
    n_blocks = max(1, values.shape[1] // block_px)
    levels = []
    for b in range(n_blocks):
        cols = slice(b * values.shape[1] // n_blocks, (b + 1) * values.shape[1] // n_blocks)
        if inside[:, cols].mean() >= 0.5:
            levels.append(float(np.median(band[:, cols][inside[:, cols]])))
    return _of_one_level(levels, level_spread * _contrast(values, flat))


def find_cap(slices, *, band=None, block_px=16, window_px=4, step_share=0.08, min_rows=4, agree_share=0.6,
             max_share=0.5, level_spread=0.15, min_slices=0.75, drift_px=8, band_tolerance_px=8,
             keeps_content=None):
    """The protective cap on top of the section: rows ``[0, edge)`` of the first slice, `band`, or None.

    A cap is a band of one material (one grey level, fine grain, maybe a fiducial mark milled in
    it) from the top of the section down to a straight horizontal edge across the whole width:
    the surface of the sample. Sample does not look like that: a row of it crosses several
    phases, and the edge of a large particle is curved. Per slice, the width is cut into column
    blocks of `block_px`; in each, the mean grey of the `window_px` rows below a row is compared
    with the `window_px` rows above it. The cap's edge is the first row (below the top, the first rows that are not
    a flat margin, plus `min_rows`) where at least `agree_share` of the blocks step at once by
    more than `step_share` of the slice's contrast (5th to 95th percentile), and above which the
    blocks are at one level (interquartile spread at most `level_spread` of the contrast: one
    material, not a row of particles). The edge must lie in the top `max_share` of the height,
    and a cap must be found so in at least `min_slices` of the slices, the first among them (the
    cap is in every slice; a chance row of steps in one is not). An edge found so only at half
    `step_share` (a cap over a particle of nearly its grey) is taken where `keeps_content` shows
    its rows z-invariant while the sample under them changes or is flat; else a warning names its rows for
    the user to state (``processing.cap_rows``).

    With a `band`, rows found z-invariant over the slices (:func:`cap_of_band`), the cap is that band
    where the look finds a cap whose edge is within `band_tolerance_px` of the band's lower edge,
    or where no cap edge shows at all (a cap of nearly the grey of the sample under it) but the band is of one
    level across the width (`level_spread`) and `keeps_content` shows its rows keeping their content
    while the rows under them change; else the band is kept as sample (a warning: large particles
    that barely change are z-invariant too, but of several phases across) and the cap is what the
    look finds alone (a fine-grained cap under sub-pixel drift or fixed curtains may not be
    z-invariant).

    Parameters
    ----------
    slices : sequence of (Y, X) ndarray
        Calibration slices (raw), of one shape; the rows returned are in the first one's frame.
    band : (int, int) or None, optional
        Rows ``[y0, y1)`` of the first slice found z-invariant, or None.
    block_px, window_px : int, optional
        Width of the column blocks (>= 4) and height of the row windows (>= 2), pixels.
    step_share, level_spread : float, optional
        Shares (0..1) of the slice's contrast, see above.
    min_rows, drift_px, band_tolerance_px : int, optional
        Rows, pixels (see above).
    agree_share, max_share, min_slices : float, optional
        Shares (0..1), see above.
    keeps_content : callable or None, optional
        ``keeps_content((y0, y1)) -> bool``: whether rows ``[y0, y1)`` of the first slice keep
        their content along the slices while the rows under them change
        (:func:`processing.align.rows_keep_content` on these slices); None: a faint edge, or a
        `band` without an edge, is never taken.

    Returns
    -------
    (int, int) or None
        ``(0, edge)``: the rows of the first slice above the sample (the top flat margin too), or
        `band` where the look agrees with it or its content shows it a cap.
    """
    slices = [np.asarray(s) for s in ([slices] if isinstance(slices, np.ndarray) and slices.ndim == 2 else slices)]
    if not slices or any(s.ndim != 2 or s.shape != slices[0].shape for s in slices):
        raise SliceShapeError(f"slices: expected 2-D slices of one shape, got {[s.shape for s in slices]}")
    if not (isinstance(block_px, (int, np.integer)) and block_px >= 4):
        raise ValueError(f"block_px: expected an integer >= 4, got {block_px!r}")
    if not (isinstance(window_px, (int, np.integer)) and window_px >= 2):
        raise ValueError(f"window_px: expected an integer >= 2, got {window_px!r}")
    for name, value in (("step_share", step_share), ("agree_share", agree_share), ("max_share", max_share),
                        ("level_spread", level_spread), ("min_slices", min_slices)):
        if not 0 < value <= 1:
            raise ValueError(f"{name}: expected 0 < share <= 1, got {value!r}")
    height = slices[0].shape[0]

    # a cap over a particle of nearly its grey has a faint edge: the edges at half the step too
    found = [_cap_edges(s, block_px=int(block_px), step_shares=(step_share, step_share / 2), min_rows=int(min_rows),
                        agree_share=agree_share, level_spread=level_spread, max_rows=max_share * height,
                        window_px=int(window_px)) for s in slices]

    def edges(k):
        """The first slice's edge at the k-th step share, and the share of the slices that show it."""
        first = found[0][k]
        # the same cap in the other slices: its edge moved by the drift only
        seen = 0.0 if first is None else sum(e[k] is not None and abs(e[k] - first) <= drift_px for e in found)
        return first, seen / len(found)

    edge, share = edges(0)
    rows = (0, int(edge)) if share >= min_slices else None
    if band is not None:
        band = (int(band[0]), int(band[1]))
        if (rows is None and keeps_content is not None
                and _one_level(slices[0], band, block_px=int(block_px), level_spread=level_spread)
                and keeps_content(band)):
            # a cap of nearly the grey of the sample under it shows no edge to the look, but its rows
            # are of one level across the width and keep their content while the rows under them
            # change: sample that barely changes (large particles) is of several phases across. Where
            # the look does find an edge above the band's, the band runs on into a particle that
            # barely changes (one spanning the width under the cap is of one level too): the edge holds
            log.warning("rows %d-%d taken for a protective cap: z-invariant from the top of the section, of one "
                        "level across the width, they keep their content along z while the sample under them "
                        "changes (no straight edge across the width shows: the cap is of nearly the sample's grey)",
                        *band)
            return band
    if rows is None:
        # a cap over a particle of nearly its grey: its edge is faint in most blocks. At half the step a
        # row of the cap's own grain, a fiducial's arm or a row of particles can pass for the edge (one
        # of the real slices, 2_phase, has one at row 28): taken only where the rows keep their content
        # along z while the sample under them changes (the deposit's grain; no single slice shows it),
        # else left to the user
        faint, faint_share = edges(1)
        if faint_share >= min_slices and keeps_content is not None and keeps_content((0, faint)):
            rows = (0, int(faint))
            log.warning("rows 0-%d taken for a protective cap whose edge is faint (a straight edge across the width "
                        "at half the step a cap needs, in %.0f %% of %d slices): they keep their content along z "
                        "while the sample under them changes or is flat", faint, 100 * faint_share, len(slices))
        elif faint_share >= min_slices:
            log.warning("rows 0-%d may be a protective cap whose edge is faint (a straight edge across the width "
                        "at half the step a cap needs, in %.0f %% of %d slices; a row of particles can pass for "
                        "one): not taken for a cap, so they count as sample and are registered on as such; state "
                        "processing.cap_rows = %d if they are cap", faint, 100 * faint_share, len(slices), faint)
        elif edge is not None or share:
            log.info("no cap: a band on top with a straight edge in %.0f %% of %d slices (need %.0f %%, the first "
                     "among them)", 100 * share, len(slices), 100 * min_slices)
    if band is None:
        return rows
    if rows is not None and abs(rows[1] - band[1]) <= band_tolerance_px:
        return band
    if rows is not None and rows[1] < band[1]:
        log.warning("z-invariant rows %d-%d run on past the cap's edge at row %d (sample under the cap that barely "
                    "changes): the cap is rows 0-%d; state processing.cap_rows if it is not", *band, rows[1], rows[1])
    else:
        log.warning("z-invariant rows %d-%d do not look like a cap (one material above a straight edge, or of one "
                    "level across the width keeping their content while the sample under them changes): kept as "
                    "sample; state processing.cap_rows if they are cap", *band)
    return rows


def cap_of_band(first, band, *, top_share=0.02):
    """The rows of the cap that a z-invariant `band` lies in, or None.

    A band found z-invariant by comparing slices (:func:`processing.align.find_reference_band`)
    is a core of the cap or fiducial strip, grown here to the rows that look like it
    (:func:`grow_rows`). The cap is on top of the section: a band that does not reach it (below
    any black margin, within `top_share` of the height) is slowly changing sample (a large
    particle), neither cap nor reference.

    Parameters
    ----------
    first : (Y, X) ndarray
        The first slice (raw), in the frame of the band.
    band : sequence of int
        ``(y0, y1, ...)``: the band's rows ``[y0, y1)`` first (an ROI's columns may follow).
    top_share : float, optional
        Share (0..1) of the height within which the grown band must start below the top.

    Returns
    -------
    (int, int) or None
        The grown rows, or None for a band that does not reach the top.
    """
    rows = grow_rows(first, (band[0], band[1]))
    margin = flat_margins(first).all(axis=1)
    top = int(np.argmin(margin)) if not margin.all() else 0
    if rows[0] <= top + top_share * first.shape[0]:
        return rows
    log.warning("z-invariant rows %d-%d do not reach the top of the section: sample changing slowly, not a "
                "cap", *rows)
    return None


@dataclass(frozen=True)
class RegionMask:
    """Which pixels of a slice are sample: automatic detection plus the user's overrides.

    Attributes
    ----------
    auto : bool
        Find flat margins automatically (:func:`flat_margins`).
    exclude_rows : tuple of (int, int)
        Row ranges ``[y0, y1)`` that are not sample (cap, surface view).
    exclude_rectangles : tuple of (int, int, int, int)
        Rectangles ``(y0, y1, x0, x1)`` that are not sample (a fiducial, a label).
    exclude_polygons : tuple of tuple of (float, float)
        Polygons of (y, x) vertices, pixels, that are not sample.
    include : (Y, X) bool ndarray or None
        A mask image: True (non-zero) on the sample; everything else is excluded.

    All in the frame of the slice as written (before drift correction).
    """

    auto: bool = True
    exclude_rows: tuple = ()
    exclude_rectangles: tuple = ()
    exclude_polygons: tuple = ()
    include: np.ndarray | None = None

    def __post_init__(self):
        rows = tuple(tuple(int(v) for v in r) for r in self.exclude_rows)
        rects = tuple(tuple(int(v) for v in r) for r in self.exclude_rectangles)
        polys = tuple(tuple(tuple(float(v) for v in p) for p in poly) for poly in self.exclude_polygons)
        for r in rows:
            if len(r) != 2 or not 0 <= r[0] < r[1]:
                raise ValueError(f"exclude_rows: expected [y0, y1] with 0 <= y0 < y1, got {list(r)}")
        for r in rects:
            if len(r) != 4 or not (0 <= r[0] < r[1] and 0 <= r[2] < r[3]):
                raise ValueError(f"exclude_rectangles: expected [y0, y1, x0, x1] with y0 < y1, x0 < x1, got {list(r)}")
        for p in polys:
            if len(p) < 3 or any(len(v) != 2 for v in p):
                raise ValueError(f"exclude_polygons: expected at least 3 [y, x] vertices, got {p!r}")
        object.__setattr__(self, "exclude_rows", rows)
        object.__setattr__(self, "exclude_rectangles", rects)
        object.__setattr__(self, "exclude_polygons", polys)
        if self.include is not None:
            include = np.asarray(self.include)
            if include.ndim != 2:
                raise SliceShapeError(f"include: expected a 2-D mask image, got shape {include.shape}")
            object.__setattr__(self, "include", include != 0)

    @property
    def is_trivial(self) -> bool:
        """Nothing to exclude and nothing to look for."""
        return not (self.auto or self.exclude_rows or self.exclude_rectangles or self.exclude_polygons
                    or self.include is not None)

    def valid(self, pixels) -> np.ndarray:
        """(Y, X) bool: True where the slice `pixels` shows the sample.

        Raises
        ------
        SliceShapeError
            The mask image's shape differs from the slice's.
        """
        pixels = check_slice(pixels)
        if self.include is not None:
            if self.include.shape != pixels.shape:
                raise SliceShapeError(f"mask image is {self.include.shape}, the slices are {pixels.shape}")
            out = self.include.copy()
        else:
            out = np.ones(pixels.shape, bool)
        for y0, y1 in self.exclude_rows:
            out[y0:y1] = False
        for y0, y1, x0, x1 in self.exclude_rectangles:
            out[y0:y1, x0:x1] = False
        if self.exclude_polygons:
            from skimage.draw import polygon2mask

            for poly in self.exclude_polygons:
                out &= ~polygon2mask(pixels.shape, np.asarray(poly))
        if self.auto:
            out &= ~flat_margins(pixels)
        return out
