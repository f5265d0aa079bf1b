"""Phase naming, and the check of the named phases against the grey classes the data show.

Phase ``i`` of the configured list (dark to bright) is label ``i + 1``; label 0
means *unassigned* (outside the field of view after drift correction, outside the valid
region, or a pixel the segmentation refused to call).

The configured phases are a claim about the sample; :func:`estimate_grey_classes` tests it. It
fits Gaussian mixtures of k = 1..5 classes to the histogram of the (lightly smoothed)
calibration slices, keeps the k of lowest BIC, merges neighbouring classes that are not
separable (Ashman's D below ``min_separation``), and marks *halo* classes: a class whose pixels
lie mostly within ``edge_px`` of strong edges is the blurred rim or bright edge halo between
other phases, not a phase (except a darkest class of 5 % of the pixels or more, which neither can
be: small voids lie near edges too). :func:`check_phases` compares the result with the names and roles and
says, in words, what does not fit (more or fewer classes than names, a halo class given a name,
a role that the dark-to-bright order gives to a class the data show is something else). It never
relabels silently: the caller decides (the chain leaves a phase the data do not show empty).

Which name is missing when the data show fewer classes than names is decided from evidence where
there is some: a phase one or two pixels thin between brighter ones (pores at particle
interfaces) has no histogram mode once blurred, but shows as dark lines below the darkest class,
which no blur of the classes found can make (:class:`DarkRidges`); then the darkest name is that
thin phase, labelled on the lines, and the classes take the other names. Without such evidence the
names follow the mixture's levels or the dark-to-bright order, and the warning says the choice is
unsure and what the other reading would be.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "UNASSIGNED",
    "DEFAULT_PHASE_NAMES",
    "ROLES",
    "Phases",
    "GreyClass",
    "ClassEstimate",
    "DarkRidges",
    "PhaseCheck",
    "estimate_grey_classes",
    "check_phases",
]

UNASSIGNED = 0
DEFAULT_PHASE_NAMES = ("pore", "electrolyte", "active")
ROLES = ("pore", "electrolyte", "active", "carbon-binder", "other")
_ROLES = ROLES


@dataclass(frozen=True)
class Phases:
    """The phases of a sample and the role each one plays in the Table 1 metrics.

    Parameters
    ----------
    names : tuple of str
        Phase names from darkest to brightest; ``names[i]`` is label ``i + 1``.
        Two to four phases.
    roles : dict of str to str, optional
        Maps the roles (:data:`ROLES`: ``"pore"``, ``"electrolyte"``, ``"active"``,
        ``"carbon-binder"``, ``"other"``) to phase names. By default a phase whose name is a
        role plays that role. Table 1 uses pore, electrolyte and active; carbon-binder and
        other are reported as phases of their own.

    Examples
    --------
    >>> p = Phases()
    >>> p.label("active")
    3
    >>> p.label_of_role("pore")
    1
    """

    names: tuple[str, ...] = DEFAULT_PHASE_NAMES
    roles: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        names = tuple(self.names)
        object.__setattr__(self, "names", names)
        if not 2 <= len(names) <= 4:
            raise ValueError(f"phases: expected 2 to 4 phase names, got {len(names)}: {names!r}")
        if len(set(names)) != len(names):
            raise ValueError(f"phases: names must be unique, got {names!r}")
        if "unassigned" in names:
            raise ValueError("phases: 'unassigned' is reserved for label 0")
        roles = {r: r for r in _ROLES if r in names}
        roles.update(self.roles)
        for role, name in roles.items():
            if role not in _ROLES:
                raise ValueError(f"phases: unknown role {role!r}, expected one of {_ROLES}")
            if name not in names:
                raise ValueError(f"phases: role {role!r} names phase {name!r}, which is not in {names!r}")
        object.__setattr__(self, "roles", roles)

    @property
    def labels(self) -> dict[str, int]:
        """Phase name to label value."""
        return {name: i + 1 for i, name in enumerate(self.names)}

    def label(self, name: str) -> int:
        """Label value of the phase called `name`."""
        try:
            return self.names.index(name) + 1
        except ValueError:
            raise KeyError(f"unknown phase {name!r}; phases are {self.names!r}") from None

    def label_of_role(self, role: str) -> int | None:
        """Label of the phase playing `role`, or None when no phase plays it."""
        name = self.roles.get(role)
        return None if name is None else self.label(name)

    def role_of(self, name: str) -> str | None:
        """The role the phase called `name` plays, or None."""
        return next((role for role, n in self.roles.items() if n == name), None)



# -- checking the named phases against the data ---------------------------------------------------

@dataclass(frozen=True)
class GreyClass:
    """One grey class found in the calibration slices.

    Attributes
    ----------
    level, sigma : float
        Mean and standard deviation of its (smoothed) grey levels, grey units.
    share : float
        Share (0..1) of the valid pixels.
    edge_share : float
        Share (0..1) of its pixels within ``edge_px`` of a strong edge.
    core_share : float
        Share (0..1) of its pixels that survive a one-pixel erosion of the class (a rim one or
        two pixels wide keeps almost none).
    halo : bool
        Edge halo or partial-volume rim, not a phase: mostly near strong edges, or a rim.
    """

    level: float
    sigma: float
    share: float
    edge_share: float
    core_share: float
    halo: bool


@dataclass(frozen=True)
class DarkRidges:
    """Evidence for a darker phase that has no histogram mode: dark lines below the darkest class.

    A phase one or two pixels thin between brighter ones (pores at particle interfaces), once
    blurred, has no grey-level mode: its pixels fall inside the next phase's range. What shows it
    is that its pixels are darker than both sides across the line (a Hessian "valley",
    :func:`processing.segment.dark_ridges`) *and* darker than the darkest class found, which no
    blur of the classes found can make.

    Attributes
    ----------
    share : float
        Share (0..1) of the valid pixels that are dark ridges below `level`.
    threshold : float
        Hessian response (grey / px^2) above which a pixel is a ridge: the median response plus
        :data:`processing.segment.DARK_RIDGE_Z` robust spreads of the calibration slices'.
    level : float
        The darkest grey class's level (grey units): the ridge's grey must be below it.
    grey : float
        Median grey level (at the detector's scale) of those ridge pixels (nan without any).
    """

    share: float
    threshold: float
    level: float
    grey: float

    @property
    def strong(self) -> bool:
        """Enough dark ridges to be a phase (more than noise ridges make: at most 0.5 % of the pixels
        on synthetic slices without a thin dark phase, noise 3-16 grey levels, blur 0.8-1.5 px)."""
        return self.share >= STRONG_DARK_RIDGES

    @property
    def some(self) -> bool:
        """More dark ridges than noise makes, but too few to call them a phase."""
        return WEAK_DARK_RIDGES <= self.share < STRONG_DARK_RIDGES


# Shares of the valid pixels in dark ridges (see DarkRidges).
WEAK_DARK_RIDGES = 0.007
STRONG_DARK_RIDGES = 0.015
# A darkest grey class holding at least this share of the pixels is a phase even when its pixels
# lie near edges (small voids, :func:`estimate_grey_classes`); below it, dark pixels along edges
# are an artefact (0.4 % of a randomised scenario's pixels).
_DARK_PHASE_SHARE = 0.05


@dataclass(frozen=True)
class ClassEstimate:
    """The grey classes the calibration slices show, with the evidence.

    Attributes
    ----------
    classes : tuple of GreyClass
        Dark to bright, after merging the classes that are not separable.
    n_classes : int
        Number of separable classes that are not halo: the number of phases the data support.
    bic : tuple of float
        Bayesian information criterion of the mixtures of 1..``max_classes`` classes (lower is
        better); ``k_bic`` = the argmin.
    k_bic : int
        Number of mixture components of lowest BIC, before merging.
    separation : tuple of float
        Ashman's D between neighbouring classes (> 2: clean separation).
    thresholds : tuple of float
        Bayes thresholds between neighbouring classes (smoothed grey units).
    centres, counts : (B,) ndarray
        The histogram the mixtures were fitted to (for plots).
    saturated_share : float
        Share of the valid pixels at the largest value of an integer input (a saturated phase).
    dark_ridges : DarkRidges or None
        Dark lines below the darkest class (None with fewer than 2 classes).
    """

    classes: tuple
    n_classes: int
    bic: tuple
    k_bic: int
    separation: tuple
    thresholds: tuple
    centres: np.ndarray = field(repr=False)
    counts: np.ndarray = field(repr=False)
    saturated_share: float = 0.0
    dark_ridges: DarkRidges | None = None

    @property
    def phase_classes(self) -> tuple:
        """The classes that are not halo."""
        return tuple(c for c in self.classes if not c.halo)

    def density(self, grid) -> np.ndarray:
        """(K, G) weighted class densities on `grid` (counts per histogram bin), for plots."""
        grid = np.asarray(grid, dtype=float)
        width = float(self.centres[1] - self.centres[0]) if self.centres.size > 1 else 1.0
        total = float(self.counts.sum())
        return np.array([total * width * c.share * np.exp(-0.5 * ((grid - c.level) / c.sigma) ** 2)
                         / (c.sigma * np.sqrt(2 * np.pi)) for c in self.classes])

    def describe(self) -> str:
        """A few lines for a human: classes, shares, separation, BIC."""
        lines = [f"{self.n_classes} separable grey class(es) (mixture of lowest BIC: {self.k_bic} components)"]
        for i, c in enumerate(self.classes):
            note = "  <- edge halo, not a phase" if c.halo else ""
            lines.append(f"  class {i + 1}: level {c.level:8.1f}  sigma {c.sigma:6.1f}  share {100 * c.share:5.1f} %"
                         f"  near edges {100 * c.edge_share:5.1f} %  core {100 * c.core_share:5.1f} %{note}")
        if self.separation:
            lines.append("  separation (Ashman's D, > 2 is clean): " + ", ".join(f"{d:.1f}" for d in self.separation))
        lines.append("  BIC k=1..%d: " % len(self.bic) + ", ".join(f"{b:.4g}" for b in self.bic))
        if self.dark_ridges is not None:
            r = self.dark_ridges
            lines.append(f"  dark lines below the darkest class (level {r.level:.1f}): {100 * r.share:.2f} % of the pixels"
                         + (f", median grey {r.grey:.1f}" if r.share else "")
                         + (" <- a thin dark phase without a histogram mode" if r.strong else ""))
        return "\n".join(lines)


@dataclass(frozen=True)
class PhaseCheck:
    """The configured phases compared with the grey classes found.

    Attributes
    ----------
    estimate : ClassEstimate
    warnings : tuple of str
        Every mismatch, in words (empty when names and data agree).
    n_fit : int
        Phases the grey-level model should be fitted with: the classes found when fewer than
        the names (no invented phase), else the number of names.
    label_values : tuple of int
        Label (1..n names) of each of the `n_fit` fitted classes, dark to bright; names not in
        it stay empty.
    empty_names : tuple of str
        Names that no class of the data takes.
    notes : tuple of str
        What is worth knowing but is no mismatch (a halo class that takes no name).
    thin_name : str or None
        The darkest name when it takes no class but shows as dark lines below the darkest class
        (:class:`DarkRidges`): labelled on those lines (:class:`processing.segment.PhaseModel`).
    naming_unsure : bool
        Fewer classes than names and nothing in the data shows which name is missing (a thin
        dark phase accounts for one missing name only): the names given to the classes are a
        guess.
    """

    estimate: ClassEstimate
    warnings: tuple
    n_fit: int
    label_values: tuple
    empty_names: tuple = ()
    notes: tuple = ()
    thin_name: str | None = None
    naming_unsure: bool = False

    @property
    def ok(self) -> bool:
        return not self.warnings


def _mixture_loglik(centres, counts, mu, sigma, weight):
    width = centres[1] - centres[0]
    dens = (weight[:, None] * np.exp(-0.5 * ((centres[None, :] - mu[:, None]) / sigma[:, None]) ** 2)
            / (sigma[:, None] * np.sqrt(2 * np.pi))).sum(axis=0)
    return float((counts * np.log(np.maximum(dens * width, 1e-300))).sum())


def _ashman_d(mu0, s0, mu1, s1):
    return float(np.sqrt(2.0) * abs(mu1 - mu0) / np.sqrt(s0 * s0 + s1 * s1))


def _merge(mu, sigma, weight, i):
    """Moment-matched merge of classes i and i+1."""
    w = weight[i] + weight[i + 1]
    m = (weight[i] * mu[i] + weight[i + 1] * mu[i + 1]) / w
    var = (weight[i] * (sigma[i] ** 2 + (mu[i] - m) ** 2) + weight[i + 1] * (sigma[i + 1] ** 2 + (mu[i + 1] - m) ** 2)) / w
    keep = lambda a, v: np.concatenate([a[:i], [v], a[i + 2:]])  # noqa: E731
    return keep(mu, m), keep(sigma, np.sqrt(var)), keep(weight, w)


# Pixels of calibration slices on which the grey classes are estimated (a few million: not every
# calibration slice of 2048^2).
EVIDENCE_PIXELS = 4_000_000


def evidence_slices(sizes):
    """Which calibration slices the grey classes are estimated on.

    Parameters
    ----------
    sizes : sequence of int
        Pixels of each calibration slice, in order.

    Returns
    -------
    (K,) ndarray of int
        Indices spread over all the slices (a phase may show in the later ones only), as many
        as hold :data:`EVIDENCE_PIXELS`.
    """
    k = 1 + int(np.searchsorted(np.cumsum(sizes), EVIDENCE_PIXELS))
    return np.unique(np.linspace(0, len(sizes) - 1, min(k, len(sizes))).round().astype(int))


def estimate_grey_classes(slices, *, valid=None, smooth_px=1.0, max_classes=5, min_separation=2.0,
                          edge_px=1, halo_share=0.6, min_core=0.3, edge_contrast=0.1):
    """How many separable grey classes the calibration slices show, with the evidence.

    Parameters
    ----------
    slices : (N, Y, X) or (Y, X) ndarray, or sequence of (Y, X) ndarray
        Calibration slices (corrected grey units).
    valid : sequence of (Y, X) bool ndarray, optional
        Pixels of each slice that show the sample (the valid-region mask).
    smooth_px : float, optional
        Gaussian pre-filter sigma (pixels), as in the segmentation.
    max_classes : int, optional
        Largest number of mixture components tried (1..8).
    min_separation : float, optional
        Neighbouring classes with Ashman's D below this are merged (not separable).
    edge_px : int, optional
        Distance (pixels) from a strong edge within which a pixel counts as near the edge.
    halo_share : float, optional
        A class with more than this share of its pixels near strong edges is edge halo (never
        the darkest class when it holds :data:`_DARK_PHASE_SHARE` of the pixels or more: a rim
        lies between two classes, and the edge halo is bright).
    min_core : float, optional
        A class of which less than this share survives a one-pixel erosion is a rim (halo; the
        same exception).
    edge_contrast : float, optional
        A strong edge: gradient (of the slice smoothed at 2 px) above this share of the
        contrast between the darkest and brightest class, per pixel, and above 3 times the
        median gradient (noise).

    Returns
    -------
    ClassEstimate

    Raises
    ------
    CalibrationError
        No valid pixel, or constant grey levels.
    """
    from scipy import ndimage

    from processing.errors import CalibrationError, SliceShapeError
    from processing.segment import (
        DARK_RIDGE_Z,
        _bayes_thresholds,
        _histogram,
        _smooth,
        dark_ridges,
        fit_gray_mixture,
    )

    if not (isinstance(max_classes, (int, np.integer)) and 1 <= max_classes <= 8):
        raise ValueError(f"max_classes: expected an integer 1..8, got {max_classes!r}")
    if not min_separation > 0:
        raise ValueError(f"min_separation: expected > 0, got {min_separation!r}")
    if not 0 < halo_share <= 1:
        raise ValueError(f"halo_share: expected 0 < s <= 1, got {halo_share!r}")
    if isinstance(slices, np.ndarray) and slices.ndim == 2:
        slices = [slices]
    slices = [np.asarray(s) for s in slices]
    if not slices or any(s.ndim != 2 for s in slices):
        raise SliceShapeError(f"slices: expected 2-D slices, got shapes {[s.shape for s in slices]}")
    masks = [np.ones(s.shape, bool) if valid is None else np.asarray(valid[i], dtype=bool)
             for i, s in enumerate(slices)]
    smoothed = [_smooth(s, smooth_px) for s in slices]
    values = np.concatenate([sm[m] for sm, m in zip(smoothed, masks)])
    if values.size == 0:
        raise CalibrationError("estimate_grey_classes: no valid pixel")
    centres, counts = _histogram(values)
    saturated = 0.0
    if np.issubdtype(slices[0].dtype, np.integer):
        top = np.iinfo(slices[0].dtype).max
        saturated = float(sum(np.count_nonzero(s[m] == top) for s, m in zip(slices, masks)) / values.size)
    # Smoothing correlates neighbouring pixels: about 4 pi sigma^2 of them carry one sample.
    n_eff = values.size / max(1.0, 4 * np.pi * smooth_px * smooth_px)
    cdf = np.cumsum(counts) / counts.sum()
    fits, bic = [], []
    for k in range(1, max_classes + 1):
        # start at the k equal-mass quantiles; free sigmas (phases differ in noise)
        init = [float(centres[min(np.searchsorted(cdf, (j + 0.5) / k), centres.size - 1)]) for j in range(k)]
        mu, sigma, weight = fit_gray_mixture(centres, counts * (n_eff / counts.sum()), init, iterations=300,
                                             equal_sigma=False, tol=1e-4 * (centres[-1] - centres[0]))
        ll = _mixture_loglik(centres, counts * (n_eff / counts.sum()), mu, sigma, weight)
        fits.append((mu, sigma, weight))
        bic.append(-2 * ll + (3 * k - 1) * np.log(n_eff))
    k_bic = int(np.argmin(bic)) + 1
    mu, sigma, weight = (a.copy() for a in fits[k_bic - 1])
    keep = weight > 1e-3
    mu, sigma, weight = mu[keep], sigma[keep], weight[keep] / weight[keep].sum()
    while mu.size > 1:
        d = [_ashman_d(mu[i], sigma[i], mu[i + 1], sigma[i + 1]) for i in range(mu.size - 1)]
        i = int(np.argmin(d))
        if d[i] >= min_separation:
            break
        mu, sigma, weight = _merge(mu, sigma, weight, i)
    thresholds = _bayes_thresholds(mu, sigma, weight) if mu.size > 1 else []
    edge_share, core_share = np.zeros(mu.size), np.ones(mu.size)
    ridges = []  # (response, grey) of the valid pixels of the slices looked at
    if mu.size > 1:
        near, core, total = np.zeros(mu.size), np.zeros(mu.size), np.zeros(mu.size)
        contrast = float(mu[-1] - mu[0])
        for s, sm, m in zip(slices, smoothed, masks):
            if total.sum() >= 2_000_000:
                break  # a few million pixels are evidence enough
            wide = ndimage.gaussian_filter(s.astype(np.float32), 2.0)
            grad = np.hypot(*np.gradient(wide))
            # strong: well above the contrast's share and the noise's own gradients (median)
            strong = grad > max(edge_contrast * contrast, 3.0 * float(np.median(grad[m])))
            edges = ndimage.binary_dilation(strong, iterations=edge_px)
            cls_image = np.searchsorted(np.asarray(thresholds), sm)
            cls = cls_image[m]
            total += np.bincount(cls, minlength=mu.size)
            near += np.bincount(cls[edges[m]], minlength=mu.size)
            for k in range(mu.size):
                core[k] += np.count_nonzero(ndimage.binary_erosion(cls_image == k) & m)
            response, grey = dark_ridges(s)
            ridges.append((response[m], grey[m]))
        edge_share, core_share = near / np.maximum(total, 1), core / np.maximum(total, 1)
    # a darkest class of a sizeable share is a phase however close to edges its pixels lie (small
    # voids): a partial-volume rim lies between two classes, and the edge halo of SEM is bright;
    # a few dark pixels along edges (0.4 % on a randomised scenario) are still an artefact
    classes = tuple(GreyClass(float(mu[i]), float(sigma[i]), float(weight[i]), float(edge_share[i]),
                              float(core_share[i]),
                              bool((i > 0 or weight[i] < _DARK_PHASE_SHARE)
                                   and (edge_share[i] > halo_share or core_share[i] < min_core)))
                    for i in range(mu.size))
    n_classes = sum(not c.halo for c in classes)
    evidence = None
    if ridges and n_classes:
        response = np.concatenate([r for r, _ in ridges])
        grey = np.concatenate([g for _, g in ridges])
        median = float(np.median(response))
        threshold = median + DARK_RIDGE_Z * 1.4826 * float(np.median(np.abs(response - median)))
        level = next(c.level for c in classes if not c.halo)
        dark = (response > threshold) & (grey < level)
        evidence = DarkRidges(share=float(np.count_nonzero(dark) / max(dark.size, 1)), threshold=threshold,
                              level=level, grey=float(np.median(grey[dark])) if dark.any() else float("nan"))
    return ClassEstimate(
        classes=classes,
        n_classes=int(n_classes),
        bic=tuple(float(b) for b in bic),
        k_bic=k_bic,
        separation=tuple(_ashman_d(mu[i], sigma[i], mu[i + 1], sigma[i + 1]) for i in range(mu.size - 1)),
        thresholds=tuple(float(t) for t in thresholds),
        centres=centres,
        counts=counts,
        saturated_share=saturated,
        dark_ridges=evidence,
    )


def _ordered_match(found, slots):
    """Order-preserving assignment of sorted `found` levels to sorted `slots` (len(found) <=
    len(slots)) minimising the total distance; returns the slot index of each found level."""
    m, n = len(found), len(slots)
    cost = np.full((m + 1, n + 1), np.inf)
    cost[0, :] = 0.0
    for i in range(1, m + 1):
        for j in range(i, n + 1):
            cost[i, j] = min(cost[i, j - 1], cost[i - 1, j - 1] + abs(found[i - 1] - slots[j - 1]))
    out, j = [], n
    for i in range(m, 0, -1):
        while cost[i, j] == cost[i, j - 1]:
            j -= 1
        out.append(j - 1)
        j -= 1
    return out[::-1]


def check_phases(estimate: ClassEstimate, phases: Phases, *, model_levels=None, min_share=0.005) -> PhaseCheck:
    """Compare the configured phases with the grey classes the data show.

    Parameters
    ----------
    estimate : ClassEstimate
        From :func:`estimate_grey_classes`.
    phases : Phases
        The configured names (dark to bright) and roles.
    model_levels : sequence of float, optional
        Levels of a mixture fitted with one class per name: when the data show fewer classes,
        each found class takes the name whose level is nearest (order kept), and the names left
        over stay empty. Without it the darkest and brightest names are kept first.
    min_share : float, optional
        A class given a role with a smaller share than this is reported.

    Returns
    -------
    PhaseCheck
    """
    names = phases.names
    n = len(names)
    found = estimate.phase_classes
    m = len(found)
    levels = ", ".join(f"{c.level:.0f}" for c in found)
    notes = [f"a grey class at level {c.level:.0f} ({100 * c.share:.1f} % of the pixels) is edge halo or a "
             f"partial-volume rim ({100 * c.edge_share:.0f} % of its pixels near strong edges, {100 * c.core_share:.0f} % "
             "left after a one-pixel erosion): not a phase; its pixels go to its neighbours"
             for c in estimate.classes if c.halo]
    # a halo is a mismatch when a grey-level model with one class per name would give it a name
    warnings = list(notes) if notes and m < n <= len(estimate.classes) else []
    n_fit, label_values, empty, thin_name, unsure = n, tuple(range(1, n + 1)), (), None, False
    if m > n:
        brightest = found[-1]
        warnings.append(
            f"the data show {m} separable grey classes (levels {levels}) but {n} phases are named "
            f"({', '.join(names)}): {m - n} of them must share a name, and every role-based metric is computed on "
            f"a mixture. Named by dark-to-bright order, the brightest class (level {brightest.level:.0f}, "
            f"{100 * brightest.share:.1f} % of the pixels) is '{names[-1]}'"
            + (f" (role {phases.role_of(names[-1])})" if phases.role_of(names[-1]) else "")
            + f". Name {m} phases dark to bright (e.g. add carbon-binder or a bright phase), or mask what is "
            "not sample ([mask], processing.cap_rows); the histogram of `revwatch calibrate` shows the classes.")
    elif 2 <= m < n:
        ridges = estimate.dark_ridges
        # dark lines below the darkest class: the darkest name is a thin phase, not one of the classes
        first = 1 if ridges is not None and ridges.strong else 0

        def name_classes(first):
            if model_levels is not None and len(model_levels) == n:
                return [first + s for s in _ordered_match([c.level for c in found], list(model_levels)[first:])]
            return list(range(first, first + m - 1)) + [n - 1]  # the extremes kept

        slots = name_classes(first)
        n_fit, label_values = m, tuple(s + 1 for s in slots)
        thin_name = names[0] if first else None
        empty = tuple(names[i] for i in range(first, n) if i not in slots)
        unsure = bool(empty)  # which of the names the classes take is a guess (the thin name is not)
        text = (f"the data show {m} separable grey classes (levels {levels}) but {n} phases are named "
                f"({', '.join(names)}): no phase is invented; ")
        if thin_name:
            text += (f"'{thin_name}' has no grey class but shows as thin dark lines ({100 * ridges.share:.1f} % of the "
                     f"pixels darker than both sides across a line and than the darkest class, level "
                     f"{ridges.level:.0f}; median grey {ridges.grey:.0f}), which no blur of the classes makes: it is "
                     "labelled on those lines (their centres: thin lines fainter than the noise are missed)")
            text += f"; {', '.join(repr(e) for e in empty)} stay(s) empty" if empty else ""
            warnings.append(text + f"; the classes are called {', '.join(names[s] for s in slots)}.")
        else:
            # which name is missing is a guess: say so, and what the other reading would be (the
            # darkest name missing, or else the extremes kept)
            other = name_classes(1) if 0 in slots else list(range(m - 1)) + [n - 1]
            basis = ("the nearest levels of a mixture of one class per name" if model_levels is not None
                     and len(model_levels) == n else "the dark-to-bright order, darkest and brightest names kept")
            seen = (f" (dark lines below the darkest class on {100 * ridges.share:.1f} % of the pixels: too few to be "
                    f"a thin phase)" if ridges is not None and ridges.some else "")
            warnings.append(
                text + f"{', '.join(repr(e) for e in empty)} stay(s) empty and the classes are called "
                f"{', '.join(names[s] for s in slots)}, by {basis}. That choice is UNSURE: nothing in the data shows "
                f"which named phase is missing{seen}; if the classes are really "
                f"{', '.join(names[s] for s in other)}, every role-based metric is computed on the wrong phase. "
                "Name only the phases in view, or check the classes with `revwatch calibrate`.")
    elif m < 2:
        warnings.append(f"the data show {m} separable grey class(es): a blank, charging or single-phase slice; "
                        f"the {n} named phases cannot be checked")
    if estimate.saturated_share > 0.005 and m >= 2:
        role = phases.role_of(names[-1]) if m <= n else None
        warnings.append(f"{100 * estimate.saturated_share:.1f} % of the pixels are saturated (the largest value)"
                        + (f"; the brightest phase '{names[-1]}' has role {role}: is it really {role}, not a "
                           "saturated bright phase?" if role in ("active", "electrolyte", "pore") else ""))
    if m >= 2:
        d = [_ashman_d(a.level, a.sigma, b.level, b.sigma) for a, b in zip(found[:-1], found[1:])]
        if min(d) < 3.0:
            notes.append(f"neighbouring grey classes overlap (Ashman's D {min(d):.1f}, < 3): noise alone will "
                         "mislabel a few percent of their pixels; raise phases.smooth_px (1.5-3; 'auto' tries them) or train the "
                         "pixel classifier (phases.training_labels)")
    if m == n:
        for name, c in zip(names, found):
            role = phases.role_of(name)
            if role in ("active", "electrolyte", "pore") and c.share < min_share:
                warnings.append(f"phase '{name}' (role {role}) is a class of only {100 * c.share:.2f} % of the "
                                "pixels: is the order of the names right?")
    return PhaseCheck(estimate=estimate, warnings=tuple(warnings), n_fit=n_fit, label_values=label_values,
                      empty_names=empty, notes=tuple(note for note in notes if note not in warnings),
                      thin_name=thin_name, naming_unsure=unsure)

