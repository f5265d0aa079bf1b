"""Drift correction on the z-invariant protective cap (issue 3's accuracy targets).

A real FIB-SEM slice also images the platinum/carbon cap deposited on top of the trench: it does
not change from slice to slice, so registering on it measures the stage drift alone, whereas
registering on the evolving microstructure also picks up the apparent lateral motion of inclined
features, which accumulates as a random walk. These tests render seeded acquisitions with the
default artefacts (noise, blur, curtaining, brightness drift, drift of 1.2 px per slice with
jumps), an evolving microstructure and a cap of 40 rows, and compare the tracker's shifts with
the known drift.

The vertical drift is kept upward (``dy <= 0``) so that the cap stays in the field of view: a
drift that carries the cap out of the image is outside what cap registration can do (the
microscope's own field-of-view re-centring prevents it in practice).
"""

import numpy as np
import pytest
from scipy import ndimage

from processing.align import DriftTracker, find_reference_band
from processing.synthetic import generate_microstructure, render_acquisition, simulate_drift

CAP_PX = 40


def _capped_acquisition(n, size, *, seed, radius_um=0.5, noise=16.0, fiducial=False, jump_probability=0.05):
    rng = np.random.default_rng(seed)
    d = simulate_drift(n, drift_px_per_slice=1.2, jump_probability=jump_probability, jump_px=15.0, rng=rng)
    d[:, 0] = -np.abs(d[:, 0])  # keep the cap in view (see the module notes)
    margin = int(np.ceil(np.abs(d).max())) + 12
    labels = generate_microstructure((n, size + 2 * margin, size + 2 * margin), particle_radius_um=radius_um,
                                     rng=rng)
    return render_acquisition(labels, drift_px=d, noise_sigma=noise, field_shape=(size, size), cap_px=CAP_PX,
                              fiducial=fiducial, rng=rng)


def changing_cap(acq, cap_px, *, fiducial=True, noise=16.0, blur_px=1.0, rng=None):
    """`acq` (rendered without a cap) with a cap whose grain is drawn anew in every slice.

    A real Pt/C cap is a 3-D deposit: its grain changes from slice to slice like the sample's,
    so only its interface with the sample (row `cap_px` of the canvas) and the fiducial cross
    (as :func:`render_acquisition` draws it: centred in the cap rows at three quarters of the
    width, arms ``0.35 * cap_px``, width ``max(2, cap_px // 10)``) are z-invariant. The cap of
    each slice is drawn at its true drift (4x4 supersampled coverage, blur, gain, offset, noise);
    the truth drift is unchanged.

    Returns
    -------
    (Z, Y, X) ndarray
        The slices, the dtype of ``acq.slices``.
    """
    rng = np.random.default_rng(rng)
    levels = np.sort(np.asarray(acq.levels, dtype=float))
    span = float(levels[-1] - levels[0])
    top, bright = float(levels[-2:].mean()), float(levels[-1] + 0.3 * span)
    n, height, width = acq.slices.shape
    cy, cx = cap_px // 2, (3 * width) // 4
    arm, half = int(0.35 * cap_px), max(2, cap_px // 10) // 2
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    out = acq.slices.astype(np.float32)
    for k in range(n):
        dy, dx = acq.drift_px[k]
        rows = int(min(height, np.ceil(cap_px - dy) + 4))  # raw row r shows canvas row r + dy
        r = (np.arange(rows)[:, None] + sub[None, :]).reshape(-1)[:, None] + dy
        c = (np.arange(width)[:, None] + sub[None, :]).reshape(-1)[None, :] + dx

        def coverage(mask):
            return mask.reshape(rows, 4, width, 4).mean(axis=(1, 3))

        cap = coverage(np.broadcast_to(r < cap_px, (r.size, c.size)))
        layer = top + ndimage.gaussian_filter(rng.standard_normal((rows, width)), 1.0) * (0.15 * span / 0.28)
        if fiducial:
            ay, ax = np.abs(r - cy), np.abs(c - cx)
            cross = coverage(((ay <= half + 0.5) & (ax <= arm + 0.5)) | ((ax <= half + 0.5) & (ay <= arm + 0.5)))
            layer = (1 - cross) * layer + cross * bright
        layer = ndimage.gaussian_filter(layer, blur_px, mode="nearest")
        cap = ndimage.gaussian_filter(cap, blur_px, mode="nearest")
        layer = acq.gain[k] * layer + acq.offset[k] + rng.normal(0.0, noise, size=layer.shape)
        out[k, :rows] = (1 - cap) * out[k, :rows] + cap * layer
    info = np.iinfo(acq.slices.dtype)
    return np.clip(np.rint(out), info.min, info.max).astype(acq.slices.dtype)


def _errors(acq, **options):
    tracker = DriftTracker(**options)
    est = [tracker.update(s) for s in acq.slices]
    return np.array([e.shift_px for e in est]) - acq.drift_px, est


def _rms(error):
    return float(np.sqrt((error**2).sum(axis=1).mean()))


@pytest.fixture(scope="module")
def default_capped():
    """60 slices of 256^2 with the default artefacts, particles of 0.5 um, cap of 40 rows."""
    return _capped_acquisition(60, 256, seed=11)


def test_cap_registration_meets_the_issue_targets(default_capped):
    error, est = _errors(default_capped, roi=(0, CAP_PX, 0, 256))
    assert all(e.reliable for e in est)
    assert _rms(error) <= 0.3
    assert np.hypot(*error[-1]) < 1.0


def test_registering_on_the_evolving_sample_accumulates_error(default_capped):
    """Negative control: the same data without the ROI builds up error (the reason for the ROI)."""
    on_cap, _ = _errors(default_capped, roi=(0, CAP_PX, 0, 256))
    whole, _ = _errors(default_capped)
    assert _rms(whole) > 0.5
    assert _rms(whole) > 3 * _rms(on_cap)


@pytest.mark.parametrize("radius_um, noise, fiducial, seed", [
    (0.3, 24.0, False, 12),
    (0.9, 8.0, True, 13),
    (0.5, 16.0, True, 14),
])
def test_cap_registration_across_particle_sizes_and_noise(radius_um, noise, fiducial, seed):
    acq = _capped_acquisition(40, 256, seed=seed, radius_um=radius_um, noise=noise, fiducial=fiducial)
    error, est = _errors(acq, roi=(0, CAP_PX, 0, 256))
    assert all(e.reliable for e in est)
    assert _rms(error) <= 0.3
    assert np.hypot(*error[-1]) < 1.0


def test_reference_band_is_found_in_the_cap_and_registers_the_run(default_capped):
    roi = find_reference_band(default_capped.slices[:12])
    assert roi is not None
    y0, y1, x0, x1 = roi
    assert y1 <= CAP_PX and y1 - y0 >= 16 and (x0, x1) == (0, 256)  # inside the cap, never the sample
    error, _ = _errors(default_capped, roi=roi)
    assert _rms(error) <= 0.3
    assert np.hypot(*error[-1]) < 1.0


def test_no_reference_band_on_an_evolving_sample_without_cap():
    rng = np.random.default_rng(17)
    d = simulate_drift(12, rng=rng)
    labels = generate_microstructure((12, 256, 256), particle_radius_um=0.5, rng=rng)
    acq = render_acquisition(labels, drift_px=d, field_shape=(192, 192), rng=rng)
    assert find_reference_band(acq.slices) is None
    with pytest.raises(ValueError, match="slices"):
        find_reference_band(acq.slices[:2])
    with pytest.raises(ValueError, match="band_rows"):
        find_reference_band(acq.slices, band_rows=4)


def test_cap_is_z_invariant_in_the_sample_frame_and_unlabelled():
    n, size = 6, 96
    rng = np.random.default_rng(15)
    d = np.array([[0, 0], [-2, 1], [-3, -2], [-5, 3], [-4, 0], [-6, 2]], dtype=float)
    labels = generate_microstructure((n, size + 40, size + 40), particle_radius_um=0.3, rng=rng)
    acq = render_acquisition(labels, drift_px=d, field_shape=(size, size), cap_px=20, fiducial=True, noise_sigma=0,
                             curtaining=0, brightness_drift=0, blur_px=0, rng=rng)
    assert np.all(acq.labels[:, :20] == 0) and np.all(acq.labels[:, 20:] > 0)
    # integer drift, no artefacts: slice k on the canvas equals slice 0 in the cap rows
    for k in range(1, n):
        on_canvas = np.roll(acq.slices[k].astype(int), d[k].astype(int), axis=(0, 1))
        rows, cols = slice(8, 20), slice(8, size - 8)  # away from the rolled-in border
        assert np.array_equal(on_canvas[rows, cols], acq.slices[0][rows, cols].astype(int))
    # the sample below evolves (not z-invariant): the check above is not trivially true
    assert not np.array_equal(acq.labels[0, 20:], acq.labels[-1, 20:])
    # the fiducial is the brightest thing in the cap
    assert acq.slices[0][:20].max() > acq.levels[-1]


def test_cap_options_are_validated():
    labels = np.full((2, 80, 80), 2, dtype=np.uint8)
    with pytest.raises(ValueError, match="cap_px"):
        render_acquisition(labels, drift_px=np.zeros((2, 2)), field_shape=(48, 48), cap_px=48)
    with pytest.raises(ValueError, match="cap_px"):
        render_acquisition(labels, drift_px=np.zeros((2, 2)), field_shape=(48, 48), cap_px=-1)
    with pytest.raises(ValueError, match="fiducial"):
        render_acquisition(labels, drift_px=np.zeros((2, 2)), field_shape=(48, 48), cap_px=4, fiducial=True)


@pytest.mark.slow
def test_cap_registration_over_300_slices_of_512():
    acq = _capped_acquisition(300, 512, seed=16, jump_probability=0.01)
    error, _ = _errors(acq, roi=(0, CAP_PX, 0, 512))
    assert _rms(error) <= 0.3
    assert np.hypot(*error[-1]) < 1.0
    whole, _ = _errors(acq)
    assert _rms(whole) > 3 * _rms(error)


# --- issue 11: a cap whose grain changes in every slice -----------------------------------

def _changing_cap_case(n, seed, *, fiducial=True):
    rng = np.random.default_rng(seed)
    d = simulate_drift(n, drift_px_per_slice=0.6, jump_probability=0.0, rng=rng)
    d[:, 0] = -np.abs(d[:, 0])  # keep the cap in view
    margin = int(np.ceil(np.abs(d).max())) + 12
    labels = generate_microstructure((n, 256 + 2 * margin, 256 + 2 * margin), particle_radius_um=0.5, rng=rng)
    acq = render_acquisition(labels, drift_px=d, field_shape=(256, 256), rng=rng)
    return changing_cap(acq, CAP_PX, fiducial=fiducial, rng=rng), d


@pytest.mark.slow
def test_cap_with_changing_grain_registers_on_its_fiducial():
    slices, d = _changing_cap_case(80, 21)
    on_cap = DriftTracker(interface_row=CAP_PX)
    est = [on_cap.update(s) for s in slices]
    error = np.array([e.shift_px for e in est]) - d
    assert all(e.reliable for e in est)
    # the first slice, one noisy image of the cap, defines the canvas: the whole stack may be
    # off by a constant of a few tenths of a pixel; around it the error stays small
    offset = error[1:].mean(axis=0)
    assert _rms(error[1:] - offset) <= 0.3
    assert _rms(error) <= 0.6  # bench_align: 300 slices, see the report
    # the cap rows as a correlation region: the changing grain defeats it
    band, _ = _errors(type("A", (), {"slices": slices, "drift_px": d}), roi=(0, CAP_PX, 0, 256))
    assert _rms(band) > 3 * _rms(error)
    # the reported error is of the right size (within a factor of 3 on this short run)
    reported = np.sqrt(np.mean([e.residual_px**2 for e in est]))
    assert _rms(error) / 3 <= reported <= 3 * _rms(error)


@pytest.mark.slow  # 10-17 s: keeps the default run under 10 minutes
def test_wander_is_flagged_on_an_evolving_sample_and_not_on_a_static_one():
    rng = np.random.default_rng(22)
    n, size = 80, 256
    d = simulate_drift(n, drift_px_per_slice=1.0, jump_probability=0.0, rng=rng)
    margin = int(np.ceil(np.abs(d).max())) + 12
    labels = generate_microstructure((n, size + 2 * margin, size + 2 * margin), particle_radius_um=0.5, rng=rng)
    evolving = render_acquisition(labels, drift_px=d, field_shape=(size, size), rng=rng)
    static = render_acquisition(np.repeat(labels[:1], n, axis=0), drift_px=d, field_shape=(size, size), rng=rng)
    tracker = DriftTracker()
    est = [tracker.update(s) for s in evolving.slices]
    error = np.hypot(*(np.array([e.shift_px for e in est]) - d).T)
    wandered = error > 1.0
    assert wandered.sum() >= 10  # precondition: the evolving sample bends whole-slice registration
    assert np.mean([e.wander for e, w in zip(est, wandered) if w]) >= 0.5
    tracker = DriftTracker()
    est = [tracker.update(s) for s in static.slices]
    assert not any(e.wander for e in est)


def test_cap_registration_is_not_locked_by_a_black_margin():
    # a left margin is a vertical edge fixed in the raw frame: the cap's template must not take
    # it for a lasting feature (x stuck at 0 px before issue 11)
    slices, d = _changing_cap_case(60, 23)
    slices = slices.copy()
    slices[:, :, :16] = 0
    tracker = DriftTracker(interface_row=CAP_PX)
    error = np.array([tracker.update(s).shift_px for s in slices]) - d
    assert _rms(error) <= 0.6


@pytest.mark.slow
def test_margins_are_found_on_the_raw_slice_when_the_correction_has_striped_them():
    # the curtain correction subtracts its stripe profile along whole columns, margins included:
    # on the corrected slice the margin no longer looks flat, and its edge, fixed in the raw
    # frame, held x at 0 (a randomised acquisition: 9 px RMS before issue 11's last round)
    slices, d = _changing_cap_case(60, 23)
    slices = slices.copy()
    slices[:, :, :16] = 0
    rng = np.random.default_rng(5)
    corrected = slices.astype(np.float32) + rng.normal(0.0, 6.0, size=(len(slices), 1, slices.shape[2]))
    tracker = DriftTracker(interface_row=CAP_PX)
    error = np.array([tracker.update(c, raw=s).shift_px for c, s in zip(corrected, slices)]) - d
    assert _rms(error) <= 0.6
    tracker = DriftTracker(interface_row=CAP_PX)
    blind = np.array([tracker.update(c).shift_px for c in corrected]) - d
    assert _rms(blind) > 2 * _rms(error)  # precondition: the striped margin does pull


@pytest.mark.slow  # cap mode from a cap the chain finds: also in tests/test_agent_chain.py
def test_a_cap_found_by_the_chain_is_registered_on_its_lasting_features():
    # no cap_rows stated (a user who only names the phases): the chain finds the cap whose grain
    # changes in every slice by its look, and registers on its template as with the rows stated
    from processing.chain import SliceChain
    from processing.io import SliceImage
    from processing.phases import Phases

    slices, d = _changing_cap_case(60, 21)
    chain = SliceChain(phases=Phases(), roi="auto")
    done = []
    for k, pixels in enumerate(slices):
        done += chain.push(SliceImage(pixels, k + 1, f"s{k + 1}.tif", (0.02, 0.02), None))
    done += chain.flush()
    y0, y1 = chain.state()["nonsample_rows"]
    assert y0 <= 2 and abs(y1 - CAP_PX) <= 3
    error = np.array([p.drift.shift_px for p in sorted(done, key=lambda p: p.index)]) - d
    # 0.36 px against 2.9 px for the whole slice (no z-invariant band: the grain changes)
    whole, _ = _errors(type("A", (), {"slices": slices, "drift_px": d}), roi=None)
    assert _rms(error) <= 0.6 and _rms(whole) > 3 * _rms(error)

def _sheared_sample_under_a_plain_cap(n, *, apparent_px, seed):
    """A sample whose features all move by `apparent_px` (dy, dx) per slice on the canvas (one
    inclined structure: a correlation on it cannot tell that from the stage), under a cap
    without fiducial whose grain changes in every slice; the stage drifts 0.5 px/slice."""
    rng = np.random.default_rng(seed)
    d = simulate_drift(n, drift_px_per_slice=0.5, jump_probability=0.0, rng=rng)  # both axes alike
    margin = int(np.ceil(np.abs(d).max())) + 12
    ay, ax = apparent_px
    side = 256 + 2 * margin
    plane = generate_microstructure((1, side + n * ay, side + n * ax), particle_radius_um=1.5, rng=rng)[0]
    labels = np.stack([plane[k * ay:k * ay + side, k * ax:k * ax + side] for k in range(n)])
    acq = render_acquisition(labels, drift_px=d, field_shape=(256, 256), rng=rng)
    return changing_cap(acq, CAP_PX, fiducial=False, rng=rng), d


@pytest.mark.slow  # 10-17 s: keeps the default run under 10 minutes
def test_an_axis_nothing_lasting_measures_is_held_not_run_away_with_an_honest_error():
    # issue 11, randomised seed 11: no fiducial, the cap's grain changes, large inclined
    # particles: the correlation's x ran away to 62 px while the stage stayed within 14 px
    n, apparent = 60, (1, 2)
    slices, d = _sheared_sample_under_a_plain_cap(n, apparent_px=apparent, seed=5)
    tracker = DriftTracker(interface_row=CAP_PX)
    est = [tracker.update(s) for s in slices]
    error = np.array([e.shift_px for e in est]) - d
    # precondition: the whole slice follows the structure, not the stage
    whole = DriftTracker()
    whole_error = np.array([whole.update(s).shift_px for s in slices]) - d
    assert np.abs(whole_error[-1, 1]) > 0.6 * n * apparent[1]
    # y from the cap's interface
    assert _rms(error[:, :1]) <= 0.5
    # x held once the correlation's errors are known (a few slices): from then on its error moves
    # only as the stage does (without the hold it would move by 2 px per slice)
    start = 6
    assert np.abs(error[start:, 1] - error[start, 1]).max() <= np.abs(d[start:, 1] - d[start, 1]).max() + 1.0
    # the reported error grows with what the stage may have done and flags the wander; the stage's
    # motion on x is taken from y's (it drifts one way on x here and wanders back on y, so the
    # report is low: 0.39 of the truth)
    true = np.hypot(*error.T)
    reported = np.array([e.residual_px for e in est])
    late = slice(n // 2, n)
    assert 0.3 <= np.sqrt(np.mean(reported[late] ** 2)) / _rms(error[late]) <= 2.0
    assert np.mean([e.wander for e, t in zip(est, true) if t > 1.0]) >= 0.8


def test_the_cap_finds_the_slice_again_after_a_jump_over_held_slices_on_a_new_sample():
    """The stage jumps 6 px while two slices are held (blank), and the sample below the cap is new
    (a long z step: nothing left to correlate): the prediction is 6 px off, beyond the cap fit's
    reach; the cap's fiducial and interface, phase-correlated with its template, place the slice."""
    n, size, margin = 30, 256, 32
    d = np.zeros((n, 2))
    d[1:, 0] = -np.cumsum(np.full(n - 1, 0.2))
    d[1:, 1] = np.cumsum(np.full(n - 1, 0.4))
    d[20:, 1] += 6.0
    rng = np.random.default_rng(3)
    labels = generate_microstructure((n, size + 2 * margin, size + 2 * margin), particle_radius_um=0.2, rng=rng)
    labels[20:] = generate_microstructure((n - 20, size + 2 * margin, size + 2 * margin), particle_radius_um=0.2,
                                          rng=rng)
    slices = changing_cap(render_acquisition(labels, drift_px=d, field_shape=(size, size), rng=rng), CAP_PX, rng=rng)
    tracker = DriftTracker(interface_row=CAP_PX)
    est = [tracker.skip() if k in (20, 21) else tracker.update(s) for k, s in enumerate(slices)]
    error = np.array([e.shift_px for e in est]) - d
    assert _rms(error[:20]) < 0.3  # precondition: registered before the jump
    assert all(e.reliable for e in est[22:])
    assert np.hypot(*error[22:].T).max() < 0.5  # before: 6-8 px off for good


def test_a_held_slice_is_placed_by_the_cap_though_dimmed_and_keeps_the_last_shift_when_the_cap_is_hidden():
    """Issue 11: the chain holds a brightness drop back from the registration, but the cap's lasting
    features still place it (the stage moves 5 px in x over two slices at 0.3x brightness, their
    noise not dimmed); the tracker learns nothing from them. Where charging hides the cap, the held
    slice keeps the last shift, unreliable, with the prediction's error: never a guess."""
    n, size, margin, held = 30, 256, 32, (20, 21)
    d = np.zeros((n, 2))
    d[1:, 0] = -np.cumsum(np.full(n - 1, 0.2))
    d[1:, 1] = np.cumsum(np.full(n - 1, 0.4))
    d[20:, 1] += 2.5
    d[21:, 1] += 2.5
    rng = np.random.default_rng(5)
    labels = generate_microstructure((n, size + 2 * margin, size + 2 * margin), particle_radius_um=0.2, rng=rng)
    acq = render_acquisition(labels, drift_px=d, field_shape=(size, size), rng=rng)
    slices = changing_cap(acq, CAP_PX, rng=rng).astype(np.float32)
    for k in held:
        slices[k] = 0.3 * slices[k] + rng.normal(0.0, 8.0, size=slices[k].shape)

    def run(skip_with_pixels):
        tracker = DriftTracker(interface_row=CAP_PX)
        est = [(tracker.skip(s) if skip_with_pixels else tracker.skip()) if k in held else tracker.update(s)
               for k, s in enumerate(slices)]
        return est, np.hypot(*(np.array([e.shift_px for e in est]) - d).T)

    blind, blind_error = run(False)
    assert blind_error[21] > 4.0  # precondition: the last shift is off by the stage's motion
    est, error = run(True)
    assert _rms(error[:20, None]) < 0.5  # precondition: registered before (a young template)
    for k in held:
        assert est[k].reliable and error[k] < 0.6
        assert 0.5 * error[k] <= est[k].residual_px or error[k] < 0.2  # an honest error
    np.testing.assert_allclose(error[22:], blind_error[22:], atol=1e-9)  # nothing learnt from them

    level = float(np.max(acq.levels)) * 1.2
    for k in held:  # charging over the cap
        rows = int(np.ceil(CAP_PX - d[k, 0])) + 3
        slices[k, :rows] = level + rng.normal(0.0, 16.0, size=(rows, size))
    hidden, _ = run(True)
    for k in held:
        assert not hidden[k].reliable and hidden[k].shift_px == hidden[19].shift_px
        assert hidden[k].residual_px == blind[k].residual_px

    # resumed after a restart, a held first slice keeps the stored shift (its margins are found
    # on the next registered slice)
    resumed = DriftTracker(interface_row=CAP_PX)
    resumed.resume(slices[19], (1.0, 2.0))
    first = resumed.skip(slices[20])
    assert first.shift_px == (1.0, 2.0) and not first.reliable


def _cap_hidden_over_a_jump(*, fiducial, seed=7, n=45, hidden=range(15, 27), jump=(-5.0, 8.0)):
    """A cap whose rows are hidden (a flat bright band: charging over the cap) on slices `hidden`,
    while the stage jumps by `jump` px and the sample below is new (a long z step: nothing left to
    correlate with). When the cap shows again the shift applied is off by the jump."""
    size, margin = 256, 32
    d = np.zeros((n, 2))
    d[1:, 0] = -np.cumsum(np.full(n - 1, 0.15))
    d[1:, 1] = np.cumsum(np.full(n - 1, 0.3))
    d[hidden.start:] += jump
    rng = np.random.default_rng(seed)
    labels = generate_microstructure((n, size + 2 * margin, size + 2 * margin), particle_radius_um=0.2, rng=rng)
    labels[hidden.start:] = generate_microstructure((n - hidden.start, size + 2 * margin, size + 2 * margin),
                                                    particle_radius_um=0.2, rng=rng)
    acq = render_acquisition(labels, drift_px=d, field_shape=(size, size), rng=rng)
    slices = changing_cap(acq, CAP_PX, fiducial=fiducial, rng=rng).astype(np.float32)
    level = float(np.max(acq.levels)) * 1.2
    for k in hidden:
        rows = int(np.ceil(CAP_PX - d[k, 0])) + 3  # the cap's rows in the raw slice, and its edge
        slices[k, :rows] = level + rng.normal(0.0, 16.0, size=(rows, size))
    return slices, d


def test_a_cap_hidden_for_several_slices_is_reported_lost_and_found_again_when_it_shows(caplog):
    """Issue 11: a cap out of view is reported (``DriftEstimate.cap_lost``, a warning), not
    silent; back in view it is found again though the shift applied meanwhile is several pixels
    off. Here it is hidden for 12 slices over a stage jump of (-5, 8) px on a new sample."""
    slices, d = _cap_hidden_over_a_jump(fiducial=True)
    tracker = DriftTracker(interface_row=CAP_PX)
    with caplog.at_level("WARNING", logger="processing.align"):
        est = [tracker.update(s) for s in slices]
    error = np.array([e.shift_px for e in est]) - d
    assert _rms(error[:15]) < 0.6  # precondition: registered before (the young template: a few tenths)
    assert np.abs(error[15:27]).max() > 3.0  # precondition: the jump is not seen while the cap is hidden
    lost = [e.cap_lost for e in est]
    assert not any(lost[:15]) and all(lost[15 + tracker.CAP_LOST_SLICES - 1:27])  # reported while hidden
    assert "the cap lost" in caplog.text and "found again" in caplog.text
    back = 27 + tracker.CAP_LOST_SLICES  # found again within one search period of its return
    assert not any(lost[back:])
    assert np.abs(error[back:]).max() < 0.6


def test_a_lost_cap_is_placed_again_by_its_edge_profile_or_not_at_all():
    from processing.align import _CapTemplate

    slices, d = _cap_hidden_over_a_jump(fiducial=True)
    cap = _CapTemplate(CAP_PX)
    cap.start(slices[0].astype(np.float64))
    k = 35  # (-10.2, 18.5) px from the first slice: beyond the fit's reach from (0, 0)
    assert cap.measure(slices[k].astype(np.float64), (0.0, 0.0)) is None or \
        np.abs(np.subtract(cap.measure(slices[k].astype(np.float64), (0.0, 0.0))[0], d[k])).max() > 1.0
    (dy, dx), sigma = cap.reacquire(slices[k].astype(np.float64), (0.0, 0.0), CAP_PX)
    assert max(sigma) < _CapTemplate.MAX_SIGMA_PX
    assert np.abs(np.subtract((dy, dx), d[k])).max() < 0.5
    # hidden (a flat band where the cap was): nothing placed that holds an axis (the band's own
    # straight lower edge may pass for the interface; the fit then finds no cap features)
    found = cap.reacquire(slices[20].astype(np.float64), (0.0, 0.0), CAP_PX)
    assert found is None or min(found[1]) >= _CapTemplate.MAX_SIGMA_PX
