"""Synthetic FIB-SEM acquisitions with known answers.

Three steps, each usable alone:

1. :func:`generate_microstructure` builds a labelled 3-phase composite (active
   particles, electrolyte matrix, pores) whose phase fractions are exact by
   construction (thresholds are quantiles of continuous fields).
2. :func:`render_acquisition` turns the labels into raw SEM slices the way a
   microscope records them (blur, stage drift with jumps, curtaining,
   brightness drift, noise) and keeps the truth: labels on the canvas of the
   first slice and the drift of every slice.
3. :func:`write_acquisition` writes the slices the way Thermo Fisher Auto
   Slice & View, Zeiss Atlas 3D or TESCAN does, metadata included.

:mod:`processing.scenarios` draws whole acquisitions at random over wide ranges
(for validation) on top of these three steps.

Voxels are anisotropic: sizes are given in micrometres and converted with
``spacing_um = (dz, dy, dx)``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage, signal

from processing.io import write_fei_project, write_slice
from processing.phases import DEFAULT_PHASE_NAMES

__all__ = [
    "DEFAULT_FRACTIONS",
    "SyntheticAcquisition",
    "generate_microstructure",
    "simulate_drift",
    "render_acquisition",
    "write_acquisition",
]

logger = logging.getLogger(__name__)

DEFAULT_FRACTIONS = {"pore": 0.20, "electrolyte": 0.35, "active": 0.45}
# A sphere is stamped into the distance field up to this multiple of its
# radius, so the final threshold may grow particles by up to this factor.
_REACH = 1.3
# Padding (px) around a slice crop so that blur and spline interpolation see
# real neighbours instead of the crop border.
_RENDER_PAD = 8
# Particles are stamped one by one (~30 us each): beyond this the generator is too slow to be useful.
_MAX_PARTICLES = 1_000_000
# Slices behind a pore that shine through it (weights exp(-j / 2) beyond that are < 3 %).
_PORE_BACK_DEPTH = 6
_PARTICLE_SHAPES = ("sphere", "ellipsoid", "faceted")
_PORE_MODELS = ("field", "voids", "interface")
# Protective cap (Pt/C deposit): grain correlation (px) and contrast (share of the level span).
_CAP_GRAIN_PX = 1.0
_CAP_GRAIN_CONTRAST = 0.15


def _as_triple(value, name):
    arr = np.broadcast_to(np.asarray(value, dtype=float), (3,))
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"{name} must be positive and finite (dz, dy, dx), got {value!r}")
    return tuple(float(v) for v in arr)


def _check_fractions(fractions):
    names = DEFAULT_PHASE_NAMES
    if set(fractions) != set(names):
        raise ValueError(f"fractions must have exactly the keys {names}, got {sorted(fractions)!r}")
    values = np.array([float(fractions[n]) for n in names])
    if np.any(values < 0) or abs(values.sum() - 1.0) > 1e-6:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {dict(fractions)!r}")
    return dict(zip(names, values))


def _random_rotation(rng):
    """A uniformly random 3-D rotation matrix (rows are the new axes)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def _particle_axes(shape_name, radius, aspect, rng):
    """Rows ``n`` such that the particle is ``max or sum of (n . v)^2 <= 1``, and its reach (um).

    Ellipsoids: a random rotation with semi-axes
    ``radius * (aspect^(2/3), aspect^(-1/3), aspect^(-1/3))`` (the sphere's volume). Faceted:
    three orthogonal slab normals plus three random ones, each at a distance drawn in
    ``[0.8, 1] * radius`` (a polyhedron of up to 12 faces, inside the cube of half-width `radius`).
    """
    rot = _random_rotation(rng)
    if shape_name == "ellipsoid":
        semi = radius * np.array([aspect ** (2 / 3), aspect ** (-1 / 3), aspect ** (-1 / 3)])
        return rot / semi[:, None], _REACH * semi.max()
    extra = rng.standard_normal((3, 3))
    normals = np.concatenate([rot, extra / np.linalg.norm(extra, axis=1, keepdims=True)])
    return normals / (radius * rng.uniform(0.8, 1.0, (6, 1))), _REACH * math.sqrt(3) * radius


def _stamp_spheres(field, centres, radii, spacing, *, shape_name="sphere", aspect=1.0, rng=None):
    """Lower `field` to the normalised squared distance to each particle, in place.

    Spheres give ``|x - c|^2 / r^2``; ellipsoids the same in their own axes; faceted particles
    the largest ``(n . (x - c))^2`` over their facet normals (see :func:`_particle_axes`), so
    that ``field <= 1`` is the particle in every case. A particle whose centre already lies
    inside a stamped particle (field < 1) is skipped: this keeps particles from piling up into
    clusters much bigger than the requested size.
    """
    shape = field.shape
    for centre, radius in zip(centres, radii):
        idx = np.floor(centre / spacing).astype(int)
        if np.all((idx >= 0) & (idx < shape)) and field[tuple(idx)] < 1.0:
            continue
        if shape_name == "sphere":
            reach = _REACH * radius
        else:
            axes_rows, reach = _particle_axes(shape_name, radius, aspect, rng)
        lo = np.maximum(np.floor((centre - reach) / spacing).astype(int), 0)
        hi = np.minimum(np.ceil((centre + reach) / spacing).astype(int) + 1, shape)
        if np.any(hi <= lo):
            continue
        offsets = [(np.arange(lo[a], hi[a]) + 0.5) * spacing[a] - centre[a] for a in range(3)]
        if shape_name == "sphere":
            axes = [(o / radius) ** 2 for o in offsets]
            d2 = (axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]).astype(np.float32)
        else:
            d2 = None
            offsets = [o.astype(np.float32) for o in offsets]
            for n in axes_rows.astype(np.float32):
                # One 3-D temporary per facet, squared in place (float32 throughout).
                proj = (n[0] * offsets[0])[:, None, None] + ((n[1] * offsets[1])[:, None] + (n[2] * offsets[2])[None, :])
                np.square(proj, out=proj)
                if d2 is None:
                    d2 = proj
                elif shape_name == "ellipsoid":
                    d2 += proj
                else:
                    np.maximum(d2, proj, out=d2)
        box = field[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        np.minimum(box, d2, out=box)


def _draw_radii(n, mean, cv, rng):
    """Log-normal radii with the given mean and coefficient of variation."""
    if cv == 0:
        return np.full(n, mean)
    s2 = math.log1p(cv * cv)
    r = rng.lognormal(math.log(mean) - s2 / 2, math.sqrt(s2), n)
    # Keep the tails physical: no dust, no boulders.
    return np.clip(r, 0.25 * mean, 4.0 * mean)


def generate_microstructure(
    shape,
    *,
    spacing_um=(0.05, 0.02, 0.02),
    fractions=DEFAULT_FRACTIONS,
    particle_radius_um=0.6,
    polydispersity=0.3,
    pore_size_um=None,
    gradient=0.0,
    particle_shape="sphere",
    aspect=2.0,
    pore_model="field",
    rng=None,
):
    """Generate a labelled 3-phase composite electrode (active, electrolyte, pore).

    Active material is a set of polydisperse, possibly overlapping particles
    (spheres, randomly oriented ellipsoids or faceted polyhedra); pores are
    chosen inside the non-active space by one of several models; electrolyte
    fills the rest. The phase fractions are exact up to one voxel per
    threshold (they are quantiles of continuous fields), whatever the
    particle size.

    Parameters
    ----------
    shape : tuple of 3 int
        ``(Z, Y, X)`` size of the volume in voxels.
    spacing_um : float or tuple of 3 float, optional
        Voxel size ``(dz, dy, dx)`` in micrometres.
    fractions : dict, optional
        Volume fractions of ``"pore"``, ``"electrolyte"`` and ``"active"``,
        summing to 1. With a `gradient` these are the means over the volume.
    particle_radius_um : float, optional
        Mean radius of the active particles in micrometres.
    polydispersity : float, optional
        Coefficient of variation of the (log-normal) particle radius, >= 0.
    pore_size_um : float, optional
        Correlation length of the pore field in micrometres (roughly the pore
        radius). Default: half the particle radius.
    gradient : float, optional
        Relative change of the active fraction along z: it goes linearly from
        ``active * (1 - gradient / 2)`` at the first slice to
        ``active * (1 + gradient / 2)`` at the last (negative values reverse
        the trend). 0 gives a statistically homogeneous volume.
    particle_shape : {"sphere", "ellipsoid", "faceted"}, optional
        Shape of the active particles: spheres; ellipsoids of the sphere's
        volume with axis ratio `aspect`, randomly oriented; faceted polyhedra
        (up to 12 random facets) of about the sphere's size.
    aspect : float, optional
        Ratio of the long to the short axes of the ellipsoids, >= 1.
    pore_model : {"field", "voids", "interface"}, optional
        ``"field"``: the highest values of a smooth random field (sponge-like
        pores); ``"voids"``: overlapping spherical voids of radius
        `pore_size_um`; ``"interface"``: the free space closest to the
        particles (delamination gaps hugging the particle surfaces).
    rng : None, int or numpy.random.Generator, optional
        Seed or generator.

    Returns
    -------
    labels : (Z, Y, X) ndarray of uint8
        1 = pore, 2 = electrolyte, 3 = active (order of
        ``processing.phases.DEFAULT_PHASE_NAMES``).

    Examples
    --------
    >>> labels = generate_microstructure((16, 64, 64), rng=0)
    >>> round(float((labels == 3).mean()), 2)
    0.45
    """
    shape = tuple(int(s) for s in np.atleast_1d(shape))
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive ints (Z, Y, X), got {shape!r}")
    spacing = np.array(_as_triple(spacing_um, "spacing_um"))
    fr = _check_fractions(fractions)
    if not (np.isfinite(particle_radius_um) and particle_radius_um >= spacing.min()):
        raise ValueError(
            f"particle_radius_um must be at least one voxel ({spacing.min()} um), got {particle_radius_um!r}"
        )
    n_expected = fr["active"] * np.prod(np.array(shape) * spacing) / (4 / 3 * math.pi * particle_radius_um**3)
    if n_expected > _MAX_PARTICLES:
        raise ValueError(
            f"particle_radius_um={particle_radius_um!r} needs about {n_expected:.0f} particles in this volume "
            f"(at most {_MAX_PARTICLES}): use larger particles or a smaller volume"
        )
    if not (np.isfinite(polydispersity) and polydispersity >= 0):
        raise ValueError(f"polydispersity must be >= 0, got {polydispersity!r}")
    if pore_size_um is None:
        pore_size_um = particle_radius_um / 2
    if not (np.isfinite(pore_size_um) and pore_size_um > 0):
        raise ValueError(f"pore_size_um must be > 0, got {pore_size_um!r}")
    if particle_shape not in _PARTICLE_SHAPES:
        raise ValueError(f"particle_shape must be one of {_PARTICLE_SHAPES}, got {particle_shape!r}")
    if not (np.isfinite(aspect) and aspect >= 1):
        raise ValueError(f"aspect must be >= 1, got {aspect!r}")
    if pore_model not in _PORE_MODELS:
        raise ValueError(f"pore_model must be one of {_PORE_MODELS}, got {pore_model!r}")
    phi = fr["active"]
    phi_lo, phi_hi = sorted((phi * (1 - gradient / 2), phi * (1 + gradient / 2)))
    if not (np.isfinite(gradient) and phi_lo >= 0 and phi_hi <= 0.95):
        raise ValueError(
            f"gradient={gradient!r} with active={phi:.3f} gives active fractions "
            f"{phi_lo:.3f}..{phi_hi:.3f} along z; they must stay within [0, 0.95]"
        )
    rng = np.random.default_rng(rng)
    nz = shape[0]
    if nz > 1:
        phi_z = phi * (1 + gradient * (np.arange(nz) / (nz - 1) - 0.5))
    else:
        phi_z = np.full(1, phi)

    field = _active_distance_field(shape, spacing, phi_z, particle_radius_um, polydispersity, rng,
                                   shape_name=particle_shape, aspect=aspect)
    active = _threshold_active(field, phi_z, particle_radius_um / spacing[0], graded=gradient != 0)
    del field

    labels = np.full(shape, 2, dtype=np.uint8)
    labels[active] = 3
    n_pore = int(round(fr["pore"] * active.size))
    if n_pore > 0:
        noise = _pore_score(pore_model, active, spacing, pore_size_um, n_pore / max(1, (~active).sum()), rng)
        free = ~active
        values = noise[free]
        n_pore = min(n_pore, values.size)
        cut = np.partition(values, values.size - n_pore)[values.size - n_pore]
        labels[free & (noise >= cut)] = 1
    logger.debug(
        "microstructure %s: fractions pore %.3f electrolyte %.3f active %.3f",
        shape, *(float((labels == k).mean()) for k in (1, 2, 3)),
    )
    return labels


def _pore_score(model, active, spacing, size_um, share, rng):
    """Score of every voxel for being pore, (Z, Y, X) float32: the highest free ones become pore.

    `share` is the pore share of the free (non-active) space, which sets the density of the
    void centres so that the voids come out about `size_um` in radius.
    """
    noise = _smooth_noise(active.shape, spacing, size_um, rng)
    if model == "field":
        return noise
    if model == "interface":
        # Closeness to the particles, roughened by the field.
        distance = ndimage.distance_transform_edt(~active, sampling=spacing).astype(np.float32)
        return np.float32(-1.0 / size_um) * distance + np.float32(0.5) * noise
    # Voids: equal spheres around random centres are the voxels nearest to a centre, so the
    # quantile of the distance to the nearest centre cuts spheres of one radius (slightly roughened).
    density = -math.log1p(-min(share, 0.95)) / (4 / 3 * math.pi * size_um**3)
    n = max(1, int(rng.poisson(density * np.prod(np.array(active.shape) * spacing))))
    seeds = np.ones(active.shape, dtype=bool)
    seeds[tuple(rng.integers(0, active.shape[a], n) for a in range(3))] = False
    distance = ndimage.distance_transform_edt(seeds, sampling=spacing).astype(np.float32)
    return np.float32(-1.0 / size_um) * distance + np.float32(0.05) * noise


def _active_distance_field(shape, spacing, phi_z, radius, cv, rng, *, shape_name="sphere", aspect=1.0):
    """Normalised squared distance to the nearest particle centre, (Z, Y, X) float32.

    Candidate spheres are added in batches (a Boolean-model estimate of how
    many are missing) until the unthresholded particles cover the target
    fraction, so that the final threshold only trims them slightly.
    """
    field = np.full(shape, np.inf, dtype=np.float32)
    extent = np.array(shape) * spacing
    margin = _REACH * radius * (1 + 3 * cv)
    lo, hi = -margin, extent + margin
    ext_volume = float(np.prod(hi - lo))
    mean_volume = 4 / 3 * math.pi * radius**3 * (1 + cv * cv) ** 3  # E[r^3] for log-normal
    # Candidate density along z follows -ln(1 - phi(z)) (Boolean model), so a
    # gradient in the target becomes a gradient in particle numbers.
    weight_z = -np.log1p(-np.clip(phi_z, 0, 0.999))
    weight_max = weight_z.max()
    target = float(np.mean(phi_z))
    covered = 0.0
    for _ in range(50):
        deficit = math.log((1 - covered) / (1 - target)) if covered < target else 0.0
        if deficit <= 0:
            break
        n = max(8, int(math.ceil(1.2 * deficit / mean_volume * ext_volume)))
        centres = rng.uniform(lo, hi, size=(n, 3))
        if weight_max > 0:
            zi = np.clip((centres[:, 0] / spacing[0]).astype(int), 0, shape[0] - 1)
            keep = rng.uniform(0, weight_max, n) < weight_z[zi]
            centres = centres[keep]
        radii = _draw_radii(len(centres), radius, cv, rng)
        _stamp_spheres(field, centres, radii, spacing, shape_name=shape_name, aspect=aspect, rng=rng)
        covered = float(np.count_nonzero(field <= 1.0)) / field.size
    return field


def _threshold_active(field, phi_z, radius_slices, *, graded):
    """Active mask with exactly the target fraction (per slice when graded)."""
    if not graded:
        n_active = int(round(float(np.mean(phi_z)) * field.size))
        flat = field.ravel()
        if n_active == 0:
            return np.zeros(field.shape, dtype=bool)
        cut = np.partition(flat, n_active - 1)[n_active - 1]
        return field <= cut
    # Per-slice quantiles give the exact profile; smoothing the thresholds
    # along z keeps particles round instead of slice-wise rescaled.
    cuts = np.full(field.shape[0], -1.0)
    for z, (plane, p) in enumerate(zip(field.reshape(field.shape[0], -1), phi_z)):
        n = int(round(p * plane.size))
        if n > 0:
            cut = np.partition(plane, n - 1)[n - 1]
            cuts[z] = cut if np.isfinite(cut) else plane[np.isfinite(plane)].max(initial=-1.0)
    cuts = ndimage.gaussian_filter1d(cuts, max(radius_slices, 1.0), mode="nearest")
    return field <= cuts[:, None, None]


def _smooth_noise(shape, spacing, length_um, rng):
    """Gaussian random field of correlation length `length_um`, (Z, Y, X) float32.

    Drawn on a coarse grid (cell = length / 2) and interpolated, which costs
    far less than filtering full-resolution noise with a wide kernel.
    """
    cell = length_um / 2
    factor = np.maximum(cell / spacing, 1.0)
    coarse_shape = tuple(int(math.ceil(n / f)) + 4 for n, f in zip(shape, factor))
    # Periodic filtering keeps the field statistically the same up to the faces.
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape).astype(np.float32), 1.0, mode="wrap")
    coords = [(np.arange(n) + 0.5) / f + 1.5 for n, f in zip(shape, factor)]
    # Separable linear interpolation, one axis at a time (cheap and exact for
    # a tensor grid).
    out = coarse
    for axis, c in enumerate(coords):
        i0 = np.floor(c).astype(int)
        w = (c - i0).astype(np.float32)
        a = np.take(out, i0, axis=axis)
        b = np.take(out, i0 + 1, axis=axis)
        bshape = [1, 1, 1]
        bshape[axis] = -1
        out = a + (b - a) * w.reshape(bshape)
    return out


@dataclass(frozen=True, eq=False)
class SyntheticAcquisition:
    """Raw slices of a synthetic acquisition and their truth.

    Attributes
    ----------
    slices : (Z, H, W) ndarray of uint8 or uint16
        Raw SEM slices as the microscope writes them (drift included).
    drift_px : (Z, 2) ndarray of float
        True ``(dy, dx)`` of each slice relative to slice 0, in pixels, in
        the ``scipy.ndimage.shift`` convention: ``ndimage.shift(slices[k],
        drift_px[k])`` maps slice k onto the frame of slice 0
        (``aligned[y] = raw[y - dy]``). ``drift_px[0]`` is ``(0, 0)``.
    labels : (Z, H, W) ndarray of uint8
        Truth labels on the canvas (the frame of slice 0).
    levels : tuple of float
        Mean grey level of each phase (label 1, 2, ...) in output units,
        before brightness drift and noise.
    gain : (Z,) ndarray of float
        Brightness gain of each slice (truth of the brightness drift).
    offset : (Z,) ndarray of float
        Brightness offset of each slice, in output grey units.
    """

    slices: np.ndarray
    drift_px: np.ndarray
    labels: np.ndarray
    levels: tuple
    gain: np.ndarray
    offset: np.ndarray


def simulate_drift(n_slices, *, drift_px_per_slice=1.2, jump_probability=0.01, jump_px=15.0, memory=1.0,
                   rng=None):
    """Stage drift: a 2-D random walk with occasional jumps.

    Parameters
    ----------
    n_slices : int
        Number of slices.
    drift_px_per_slice : float, optional
        Standard deviation (px) of each step of the walk, per axis.
    jump_probability : float, optional
        Probability, per slice, of an extra jump.
    jump_px : float, optional
        Length (px) of a jump, in a random direction.
    memory : float, optional
        Share of the previous position kept at each step, in (0, 1]: 1 is a
        free random walk; below 1 the stage is pulled back towards the start
        (the microscope's own drift correction re-centring the region), so
        long runs stay within about ``drift_px_per_slice / sqrt(1 - memory**2)``.
    rng : None, int or numpy.random.Generator, optional

    Returns
    -------
    drift_px : (n_slices, 2) ndarray of float
        ``(dy, dx)`` of each slice relative to slice 0 (first row zero), in
        the convention of :class:`SyntheticAcquisition`.
    """
    n_slices = int(n_slices)
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices!r}")
    if not drift_px_per_slice >= 0:
        raise ValueError(f"drift_px_per_slice must be >= 0, got {drift_px_per_slice!r}")
    if not 0 <= jump_probability <= 1:
        raise ValueError(f"jump_probability must be in [0, 1], got {jump_probability!r}")
    if not jump_px >= 0:
        raise ValueError(f"jump_px must be >= 0, got {jump_px!r}")
    if not 0 < memory <= 1:
        raise ValueError(f"memory must be in (0, 1], got {memory!r}")
    rng = np.random.default_rng(rng)
    steps = rng.normal(0.0, drift_px_per_slice, size=(n_slices, 2)) if drift_px_per_slice > 0 else np.zeros((n_slices, 2))
    jumps = rng.uniform(size=n_slices) < jump_probability
    angles = rng.uniform(0, 2 * np.pi, size=n_slices)
    steps += jumps[:, None] * jump_px * np.stack([np.sin(angles), np.cos(angles)], axis=1)
    steps[0] = 0.0
    if memory == 1:
        return np.cumsum(steps, axis=0)
    return signal.lfilter([1.0], [1.0, -memory], steps, axis=0)


def _px(values):
    """Tuple of plain ints, for shapes in messages and slicing."""
    return tuple(int(v) for v in values)


def _background_fields(n_slices, rng, *, cells=4, persistence=0.95):
    """Coarse (Z, cells, cells) unit-variance fields evolving slowly along z."""
    out = np.empty((n_slices, cells, cells))
    out[0] = rng.standard_normal((cells, cells))
    keep = math.sqrt(1 - persistence**2)
    for k in range(1, n_slices):
        out[k] = persistence * out[k - 1] + keep * rng.standard_normal((cells, cells))
    return out


def _ar1_walk(n, step, rng, *, memory=0.98):
    """Random walk with weak mean reversion (AR(1)), starting at 0."""
    out = np.zeros(n)
    if step > 0:
        eps = rng.normal(0.0, step, size=n)
        for k in range(1, n):
            out[k] = memory * out[k - 1] + eps[k]
    return out


def _curtain_profiles(n_slices, width, rng, *, correlation_px=2.0, persistence=0.9):
    """Unit-variance column profiles, (Z, W), evolving slowly from slice to slice."""
    def draw():
        p = ndimage.gaussian_filter1d(rng.standard_normal(width), correlation_px, mode="wrap")
        return p / max(p.std(), 1e-12)

    out = np.empty((n_slices, width))
    out[0] = draw()
    keep = math.sqrt(1 - persistence**2)
    for k in range(1, n_slices):
        out[k] = persistence * out[k - 1] + keep * draw()
    return out


def render_acquisition(
    labels,
    *,
    levels=(45, 115, 195),
    blur_px=1.0,
    noise_sigma=16.0,
    curtaining=0.1,
    brightness_drift=0.02,
    drift_px_per_slice=1.2,
    jump_probability=0.01,
    jump_px=15.0,
    drift_px=None,
    charging=0.0,
    pore_back=0.0,
    counts_at_max=None,
    dtype=np.uint8,
    field_shape=None,
    cap_px=0,
    fiducial=False,
    curtain_angle_deg=0.0,
    gain_profile=None,
    rng=None,
):
    """Render labels as raw FIB-SEM slices, with the truth kept aside.

    Slice ``k`` images ``labels[k]`` through a field of view of `field_shape`
    that the stage drift moves across the (larger) labels; the canvas is the
    field of view of slice 0, centred in the labels. Per slice: grey levels,
    Gaussian blur, subpixel drift (cubic spline), curtaining, brightness
    gain/offset, optional charging background, shot and Gaussian noise,
    rounding and clipping to `dtype`.

    With `cap_px` > 0 the scene also holds the protective cap a FIB-SEM operator deposits
    (platinum or carbon) on top of the trench: in the canvas frame, every row above row `cap_px`
    is cap instead of sample, the same for every slice (z-invariant), so the top `cap_px` rows of
    slice 0 (more or fewer on later slices, as the stage drifts) show a fine random grain around
    its own grey level (the mean of the two brightest levels), optionally with a bright milled
    fiducial cross. The cap is part of the scene, so it drifts, blurs and is shifted exactly like
    the sample, and the truth drift is unchanged; truth labels are 0 there (not sample).

    Parameters
    ----------
    labels : (Z, Y, X) ndarray of int
        Phase labels 1..len(levels), e.g. from :func:`generate_microstructure`.
        Y and X must exceed the field of view by the drift margin.
    levels : sequence of float, optional
        Grey level of each phase (label 1, 2, ...) on the 8-bit scale; scaled
        by 257 for 16-bit output.
    blur_px : float, optional
        Standard deviation (px) of the Gaussian point spread function.
    noise_sigma : float, optional
        Standard deviation of the additive Gaussian noise, 8-bit scale.
    curtaining : float, optional
        Strength of the vertical stripes: their standard deviation is
        ``curtaining * (max(levels) - min(levels)) / 2``. Stripes vary along x
        (correlation ~2 px), fade in slowly from top to bottom, are stronger
        below bright (active) material, and evolve from slice to slice.
    brightness_drift : float, optional
        Step of the per-slice gain random walk (relative); the offset walks
        with half that step times the level span. Weak mean reversion keeps
        long runs within the detector range.
    drift_px_per_slice, jump_probability, jump_px : float, optional
        Stage drift, see :func:`simulate_drift`. Ignored when `drift_px` is given.
    drift_px : (Z, 2) array of float, optional
        Explicit drift (first row must be zero) instead of a simulated one.
    charging : float, optional
        Amplitude of a smooth background (charging, uneven detector
        response): a random field of a few features across the slice, with
        standard deviation ``charging * span``, evolving slowly along z.
    pore_back : float, optional
        Shine-through of pores (label 1), 0..1: a pore pixel shows this share
        of the material behind it, averaged over the next slices with weights
        ``exp(-j / 2)`` (j = 1, 2, ... slices deeper).
    counts_at_max : float, optional
        Detected electrons per pixel at the brightest level; when given,
        Poisson (shot) noise at that dose is applied before the Gaussian noise.
    dtype : {numpy.uint8, numpy.uint16}, optional
        Output pixel type.
    field_shape : tuple of 2 int, optional
        ``(H, W)`` of the slices. Default: the labels' ``(Y, X)`` minus twice
        the margin the drift needs.
    curtain_angle_deg : float, optional
        Angle of the curtain stripes from vertical, in degrees (|angle| < 45):
        a tilted stripe runs down and to the right for a positive angle.
    gain_profile : (Z,) array of float, optional
        Extra per-slice gain multiplying the brightness walk, before the noise
        (a slow ramp over the run, sudden drops of a few slices). Default 1.
    cap_px : int, optional
        Height (px) of the protective cap at the top of the canvas; 0 (default) for none. The
        cap's grain has a correlation of ~1 px and a standard deviation of 15 % of the level span.
    fiducial : bool, optional
        Mill a bright cross (arms ``0.7 * cap_px`` long, ``max(2, cap_px // 10)`` px wide) into
        the cap, centred in its rows at three quarters of the width. Needs ``cap_px >= 8``.
    rng : None, int or numpy.random.Generator, optional

    Returns
    -------
    SyntheticAcquisition

    Raises
    ------
    ValueError
        Bad parameter, or labels too small for the field of view plus the
        drift (the message names the margin needed).
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be a (Z, Y, X) integer array, got {labels.dtype} {labels.shape}")
    levels8 = np.asarray(levels, dtype=float)
    if levels8.ndim != 1 or levels8.size < 1:
        raise ValueError(f"levels must be a sequence of grey levels, got {levels!r}")
    lo_label, hi_label = int(labels.min()), int(labels.max())
    if lo_label < 1 or hi_label > levels8.size:
        raise ValueError(f"labels must be in 1..{levels8.size} (one per level), got {lo_label}..{hi_label}")
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.uint8), np.dtype(np.uint16)):
        raise ValueError(f"dtype must be uint8 or uint16, got {dtype}")
    for name, value in (("blur_px", blur_px), ("noise_sigma", noise_sigma), ("curtaining", curtaining),
                        ("brightness_drift", brightness_drift), ("charging", charging)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    if not 0 <= pore_back <= 1:
        raise ValueError(f"pore_back must be in [0, 1], got {pore_back!r}")
    if counts_at_max is not None and not (np.isfinite(counts_at_max) and counts_at_max > 0):
        raise ValueError(f"counts_at_max must be > 0 or None, got {counts_at_max!r}")
    cap_px = int(cap_px)
    if cap_px < 0:
        raise ValueError(f"cap_px must be >= 0, got {cap_px!r}")
    if fiducial and cap_px < 8:
        raise ValueError(f"fiducial needs a cap of at least 8 px (cap_px), got cap_px={cap_px!r}")
    if not (np.isfinite(curtain_angle_deg) and abs(curtain_angle_deg) < 45):
        raise ValueError(f"curtain_angle_deg must be within (-45, 45) degrees, got {curtain_angle_deg!r}")
    rng = np.random.default_rng(rng)
    n_slices = labels.shape[0]
    if gain_profile is not None:
        gain_profile = np.asarray(gain_profile, dtype=float)
        if gain_profile.shape != (n_slices,) or not np.all(np.isfinite(gain_profile) & (gain_profile > 0)):
            raise ValueError(f"gain_profile must be ({n_slices},) positive values, got shape {gain_profile.shape}")
    if drift_px is None:
        drift = simulate_drift(n_slices, drift_px_per_slice=drift_px_per_slice,
                               jump_probability=jump_probability, jump_px=jump_px, rng=rng)
    else:
        drift = np.array(drift_px, dtype=float)
        if drift.shape != (n_slices, 2) or not np.all(np.isfinite(drift)) or np.any(drift[0] != 0):
            raise ValueError(f"drift_px must be a finite ({n_slices}, 2) array with a zero first row, got shape {drift.shape}")

    big = np.array(labels.shape[1:])
    need = np.ceil(np.abs(drift).max(axis=0)).astype(int) + _RENDER_PAD
    if field_shape is None:
        field = big - 2 * need
        if np.any(field < 16):
            raise ValueError(
                f"labels of {_px(big)} px leave no field of view for a drift of up to "
                f"{_px(need - _RENDER_PAD)} px: give labels larger than {_px(2 * need + 16)} px (Y, X) "
                f"or less drift"
            )
    else:
        field = np.array(field_shape, dtype=int)
        if field.shape != (2,) or np.any(field < 1):
            raise ValueError(f"field_shape must be (H, W) positive ints, got {field_shape!r}")
        if np.any((big - field) // 2 < need):
            raise ValueError(
                f"labels of {_px(big)} px are too small for field_shape {_px(field)} with this drift: "
                f"needs a margin of {_px(need)} px on each side, i.e. labels of at least "
                f"{_px(field + 2 * need)} px (Y, X)"
            )
    margin = (big - field) // 2
    field = _px(field)
    if cap_px >= field[0]:
        raise ValueError(f"cap_px must be smaller than the field height {field[0]} px, got {cap_px!r}")

    scale = 257.0 if dtype == np.uint16 else 1.0
    lut = np.concatenate([[0.0], levels8]) * scale
    span = float(levels8.max() - levels8.min()) * scale
    gain = 1.0 + _ar1_walk(n_slices, brightness_drift, rng)
    if gain_profile is not None:
        gain = gain * gain_profile
    offset = _ar1_walk(n_slices, brightness_drift / 2, rng) * span
    curtains = _curtain_profiles(n_slices, field[1], rng) * (curtaining * span / 2)
    top_fade = np.linspace(0.5, 1.0, field[0])[:, None]
    # Column of the stripe profile each pixel sees: a tilted stripe moves sideways with depth.
    tilt = math.tan(math.radians(curtain_angle_deg))
    stripe_x = np.arange(field[1])[None, :] - tilt * (np.arange(field[0])[:, None] - field[0] / 2)
    active_label = hi_label if levels8.size >= 3 else None
    maxval = float(np.iinfo(dtype).max)
    background = _background_fields(n_slices, rng) * (charging * span) if charging > 0 else None
    depth_weights = np.exp(-np.arange(1, _PORE_BACK_DEPTH + 1) / 2.0)
    cap_rows = margin[0] + cap_px  # label rows above this one are cap (in every slice)
    cap = _cap_plane((cap_rows, big[1]), levels8 * scale, margin, field, fiducial, rng) if cap_px else None

    truth = labels[:, margin[0]:margin[0] + field[0], margin[1]:margin[1] + field[1]].copy()
    truth[:, :cap_px] = 0
    slices = np.empty((n_slices,) + field, dtype=dtype)
    pad = _RENDER_PAD
    for k in range(n_slices):
        # raw_k[y] = canvas[y + dy] = labels[margin + y + dy]
        origin = margin + drift[k]
        start = np.floor(origin).astype(int)
        frac = origin - start
        rows = slice(start[0] - pad, start[0] + field[0] + pad)
        cols = slice(start[1] - pad, start[1] + field[1] + pad)
        crop = labels[k, rows, cols]
        grey = lut[crop].astype(np.float32)
        if cap is not None:
            n_cap = min(max(cap_rows - rows.start, 0), grey.shape[0])
            crop = crop.copy()
            crop[:n_cap] = 0  # no sample under the cap: no pore shine-through, no particle shadow
            grey[:n_cap] = cap[rows.start:rows.start + n_cap, cols]
        if pore_back > 0 and k + 1 < n_slices:
            behind = labels[k + 1:k + 1 + _PORE_BACK_DEPTH, start[0] - pad:start[0] + field[0] + pad,
                            start[1] - pad:start[1] + field[1] + pad]
            w = depth_weights[:len(behind)]
            shine = np.tensordot(w / w.sum(), lut[behind], axes=1)
            grey = np.where(crop == 1, (1 - pore_back) * grey + pore_back * shine, grey).astype(np.float32)
        if blur_px > 0:
            grey = ndimage.gaussian_filter(grey, blur_px, mode="nearest")
        if np.any(frac != 0):
            grey = ndimage.shift(grey, -frac, order=3, mode="nearest")
        grey = grey[pad:pad + field[0], pad:pad + field[1]]
        if curtaining > 0:
            strength = top_fade
            if active_label is not None:
                # Dense particles shadow the milling: stripes strengthen below them.
                seen = np.cumsum(crop[pad:pad + field[0], pad:pad + field[1]] == active_label, axis=0)
                strength = top_fade * (1.0 + seen / field[0])
            if tilt == 0:
                grey = grey + strength * curtains[k][None, :]
            else:
                grey = grey + strength * np.interp(stripe_x, np.arange(field[1]), curtains[k], period=field[1])
        grey = gain[k] * grey + offset[k]
        if background is not None:
            grey = grey + ndimage.zoom(background[k], np.array(field) / background.shape[1:], order=3, grid_mode=True, mode="nearest")
        if counts_at_max is not None:
            per_count = lut.max() / counts_at_max
            grey = rng.poisson(np.clip(grey, 0, None) / per_count) * per_count
        if noise_sigma > 0:
            grey = grey + rng.normal(0.0, noise_sigma * scale, size=grey.shape)
        slices[k] = np.clip(np.rint(grey), 0, maxval).astype(dtype)
    return SyntheticAcquisition(
        slices=slices,
        drift_px=drift,
        labels=truth,
        levels=tuple(float(v) for v in levels8 * scale),
        gain=gain,
        offset=offset,
    )


def _cap_plane(shape, levels, margin, field, fiducial, rng):
    """Grey levels of the protective cap, (rows, X) float32 in label coordinates.

    A fine grain (Gaussian-filtered noise) around the mean of the two brightest levels, with an
    optional bright cross whose centre sits in the middle of the cap rows of the canvas.
    """
    top = np.sort(levels)[-2:]
    span = float(levels.max() - levels.min())
    grain = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), _CAP_GRAIN_PX, mode="wrap")
    plane = top.mean() + grain * np.float32(_CAP_GRAIN_CONTRAST * span / max(float(grain.std()), 1e-12))
    if fiducial:
        cap_px = shape[0] - margin[0]
        cy, cx = margin[0] + cap_px // 2, margin[1] + (3 * field[1]) // 4
        arm, half = int(0.35 * cap_px), max(2, cap_px // 10) // 2
        bright = levels.max() + 0.3 * span
        plane[cy - arm:cy + arm + 1, cx - half:cx + half + 1] = bright
        plane[cy - half:cy + half + 1, cx - arm:cx + arm + 1] = bright
    return plane.astype(np.float32)


def write_acquisition(acq, folder, *, layout="fei", pixel_size_um=0.02, slice_spacing_um=0.05,
                      z_jitter_um=0.0, z_um=None, pixel_scale=None, detector="SESI", rng=None):
    """Write the slices of `acq` the way the microscope software does.

    Parameters
    ----------
    acq : SyntheticAcquisition
    folder : str or os.PathLike
        Project (FEI) or destination (Zeiss) folder; created if missing.
    layout : {"fei", "zeiss", "tescan"}, optional
        ``"fei"``: ``<folder>/Images/SEM Image/SEM Image - SliceImage - 001.tif``
        plus ``<folder>/EMProject.emxml`` holding the slice spacing.
        ``"zeiss"``: ``<folder>/<detector>/slice_00001_z=0.0000um.tif``.
        ``"tescan"``: ``<folder>/slice_00001.tif`` with a ``-tif.hdr`` sidecar
        (no slice spacing anywhere: the user has to state it).
    pixel_size_um : float or (float, float), optional
        Pixel size ``(dy, dx)`` written into the TIFF metadata.
    z_um : (Z,) array of float, optional
        Zeiss only: the z of every slice (non-uniform steps, dropped slices),
        written into the names instead of ``k * slice_spacing_um``.
    pixel_scale : (Z,) array of float, optional
        Per-slice factor on `pixel_size_um` (a magnification change); default 1.
    slice_spacing_um : float, optional
        Nominal distance between slices (FEI project file; Zeiss file names).
    z_jitter_um : float, optional
        Zeiss only: standard deviation of the measured z around the nominal
        ``k * slice_spacing_um`` (Atlas records the measured position, so the
        spacing is not uniform); must stay below half the spacing.
    detector : str, optional
        Detector folder name for the Zeiss layout.
    rng : None, int or numpy.random.Generator, optional
        For the z jitter.

    Returns
    -------
    list of pathlib.Path
        The slice files, in slice order (indices start at 1).
    """
    if layout not in ("fei", "zeiss", "tescan"):
        raise ValueError(f"layout must be 'fei', 'zeiss' or 'tescan', got {layout!r}")
    if not (np.isfinite(slice_spacing_um) and slice_spacing_um > 0):
        raise ValueError(f"slice_spacing_um must be > 0, got {slice_spacing_um!r}")
    if not 0 <= z_jitter_um < slice_spacing_um / 2:
        raise ValueError(f"z_jitter_um must be in [0, slice_spacing_um / 2), got {z_jitter_um!r}")
    n_slices = len(acq.slices)
    scale = np.ones(n_slices) if pixel_scale is None else np.asarray(pixel_scale, dtype=float)
    if scale.shape != (n_slices,) or not np.all(np.isfinite(scale) & (scale > 0)):
        raise ValueError(f"pixel_scale must be ({n_slices},) positive factors, got {pixel_scale!r}")
    if z_um is not None:
        z_um = np.array(z_um, dtype=float)
        if z_um.shape != (n_slices,) or not np.all(np.diff(z_um) > 0):
            raise ValueError(f"z_um must be ({n_slices},) increasing positions, got shape {z_um.shape}")
    elif layout == "zeiss":
        z_um = np.arange(n_slices) * slice_spacing_um
    if z_jitter_um > 0 and layout == "zeiss":
        z_um[1:] += np.random.default_rng(rng).normal(0.0, z_jitter_um, n_slices - 1).clip(
            -0.49 * slice_spacing_um, 0.49 * slice_spacing_um)
    root = Path(folder)
    if layout == "fei":
        target = root / "Images" / "SEM Image"
        write_fei_project(root, slice_spacing_um=slice_spacing_um)
    else:
        target = root / detector if layout == "zeiss" else root
    size = np.broadcast_to(np.asarray(pixel_size_um, dtype=float), (2,))
    return [
        write_slice(target, k + 1, pixels, layout=layout, pixel_size_um=tuple(size * scale[k]),
                    z_um=float(z_um[k]) if layout == "zeiss" else None)
        for k, pixels in enumerate(acq.slices)
    ]
