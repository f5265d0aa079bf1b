"""The phase model checked against the data: classes found, halos, mismatches, no invented phase,
four phases end to end, the pixel classifier from training labels."""

import numpy as np
import pytest
from scipy import ndimage

from processing.align import apply_shift
from processing.chain import SliceChain
from processing.io import SliceImage
from processing.phases import Phases, check_phases, estimate_grey_classes
from processing.synthetic import generate_microstructure, render_acquisition

FOUR = ("pore", "carbon-binder", "electrolyte", "active")


def _labels(n_phases, n, size, seed, *, halo_px=0):
    """Truth labels 1..n_phases (dark to bright) on a (n, size + 24, size + 24) volume.

    2: pore and active; 3: the generator's pore, electrolyte, active; 4: a carbon-binder phase
    carved from the electrolyte as blobs of a smooth random field. ``halo_px`` adds a bright
    ring of that width around the dark particles of a 2-phase volume (label 3).
    """
    lab = generate_microstructure((n, size + 24, size + 24), particle_radius_um=0.5, rng=seed)
    if n_phases == 2:
        out = np.where(lab == 3, 1, 2).astype(np.uint8)  # dark particles in a bright matrix
        if halo_px:
            ring = np.array([ndimage.binary_dilation(s == 1, iterations=halo_px) for s in out]) & (out == 2)
            out[ring] = 3
        return out
    if n_phases == 3:
        return lab
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=lab.shape), (1.5, 4, 4))
    electrolyte = lab == 2
    out = np.where(lab == 3, 4, np.where(electrolyte, 3, 1)).astype(np.uint8)
    out[electrolyte & (field > np.quantile(field[electrolyte], 0.55))] = 2
    return out


_LEVELS = {2: (60, 190), 3: (45, 115, 195), 4: (40, 90, 140, 205)}


def _acquisition(labels, levels, *, seed=5, noise=16.0, size=192):
    return render_acquisition(labels, levels=levels, drift_px=np.zeros((labels.shape[0], 2)),
                              field_shape=(size, size), noise_sigma=noise, rng=seed)


def _push(chain, slices):
    out = []
    for k, pixels in enumerate(slices):
        out.extend(chain.push(SliceImage(pixels, k + 1, f"s{k + 1}.tif", (0.02, 0.02), None)))
    return out + chain.flush()


def _truth_at_shift(truth, done):
    """Truth labels moved by the shift the chain applied to each slice (alignment errors do not count)."""
    return np.array([apply_shift(t, p.drift.shift_px, order=0)[0] for t, p in zip(truth, done)])


@pytest.mark.parametrize("n_phases, seed", [(2, 0), (3, 1), (4, 2)])
def test_the_classes_found_are_the_phases_rendered(n_phases, seed):
    acq = _acquisition(_labels(n_phases, 6, 192, seed), _LEVELS[n_phases])
    estimate = estimate_grey_classes(acq.slices[:4])
    assert estimate.n_classes == n_phases
    found = [c.level for c in estimate.phase_classes]
    assert np.allclose(found, _LEVELS[n_phases], atol=12)
    assert min(estimate.separation) > 2.0
    assert check_phases(estimate, Phases(("a", "b", "c", "d")[:n_phases])).ok


def test_a_bright_edge_halo_is_not_a_phase():
    acq = _acquisition(_labels(2, 6, 192, 3, halo_px=2), (60, 150, 220))
    estimate = estimate_grey_classes(acq.slices[:4])
    # the ring (5 % of the pixels) and the partial-volume rim take no class of their own
    assert estimate.n_classes == 2
    assert np.allclose([c.level for c in estimate.phase_classes], (60, 150), atol=12)
    assert all(c.core_share < 0.3 for c in estimate.classes if c.halo)
    check = check_phases(estimate, Phases(("particle", "matrix")))
    assert check.ok and check.n_fit == 2
    # three names for two phases: not invented, and said
    check = check_phases(estimate, Phases(("pore", "electrolyte", "active")))
    assert check.n_fit == 2 and check.label_values == (1, 3) and not check.ok


@pytest.mark.slow
def test_voids_near_edges_are_the_darkest_phase_not_an_edge_halo():
    """Scenario 7 of the randomised set at 300 slices (voids a quarter of the sample, noise 25 %
    of the smallest level step): 61 % of the pore class lay within a pixel of strong edges, so it
    was taken for an edge halo, and the three names went to a fresh two-level fit named as the
    two classes left: the pores were called active (29.8 % of the labels right over the run). A
    rim lies between two classes and the SEM edge halo is bright: the darkest class is a phase;
    and a model with fewer classes than names is fitted at the classes the names were given to."""
    from agent.config import Config
    from processing.scenarios import random_scenario, render_scenario

    rendered = render_scenario(random_scenario(7, n_slices=300))
    truth = rendered.truth
    config = Config.model_validate({"phases": {"names": list(truth.phase_names)}})
    chain = SliceChain.from_config(config.processing, phases=config.phases.to_phases(), smooth_px=config.phases.smooth_px)
    done = _push(chain, rendered.slices[:40])
    assert chain.phase_check.n_fit == 3 and chain.phase_check.ok, chain.phase_check.warnings
    labels = np.array([p.labels for p in done if p.flag != "held"])
    expected = _truth_at_shift(truth.labels[[p.index - 1 for p in done if p.flag != "held"]],
                               [p for p in done if p.flag != "held"])
    inside = (labels > 0) & (expected > 0)
    assert np.mean(labels[inside] == expected[inside]) >= 0.85


def test_more_classes_than_names_is_a_warning_that_names_the_brightest():
    acq = _acquisition(_labels(4, 6, 192, 4), _LEVELS[4])
    check = check_phases(estimate_grey_classes(acq.slices[:4]), Phases())
    assert not check.ok and check.n_fit == 3
    assert "4 separable grey classes" in check.warnings[0] and "'active' (role active)" in check.warnings[0]


def test_two_phase_sample_with_three_names_leaves_the_middle_phase_empty():
    truth = _labels(2, 12, 192, 6)[:, :, ::-1].copy()
    acq = _acquisition(truth, (60, 190))
    chain = SliceChain(phases=Phases(), calibration_slices=6)
    done = _push(chain, acq.slices)
    labels = np.array([p.labels for p in done])
    assert chain.phase_check.empty_names == ("electrolyte",)
    assert any("no phase is invented" in w for w in chain.phase_check.warnings)
    assert not np.any(labels == 2)
    expected = _truth_at_shift(np.where(acq.labels == 1, 1, 3), done)
    inside = (labels > 0) & (expected > 0)
    assert np.mean(labels[inside] == expected[inside]) >= 0.97


def test_four_phases_end_to_end():
    acq = _acquisition(_labels(4, 12, 192, 7), _LEVELS[4])
    chain = SliceChain(phases=Phases(FOUR), calibration_slices=6)
    done = _push(chain, acq.slices)
    assert chain.phase_check.ok, chain.phase_check.warnings
    assert chain.phase_model.n_phases == 4
    labels = np.array([p.labels for p in done])
    truth = _truth_at_shift(acq.labels, done)
    inside = (labels > 0) & (truth > 0)
    assert np.mean(labels[inside] == truth[inside]) >= 0.9
    for k in range(1, 5):
        assert abs(np.mean(labels[inside] == k) - np.mean(truth[inside] == k)) <= 0.02
        assert np.mean(labels[inside & (truth == k)] == k) >= 0.8  # carbon-binder is its own phase


def test_pixel_classifier_from_training_labels_in_the_chain():
    acq = _acquisition(_labels(3, 6, 192, 8), _LEVELS[3])
    sparse = np.zeros(acq.labels[0].shape, np.uint8)
    for k in (1, 2, 3):  # a few pixels of every phase, well inside it
        core = ndimage.binary_erosion(acq.labels[0] == k, iterations=3)
        ys, xs = np.nonzero(core)
        pick = np.random.default_rng(k).choice(ys.size, 200, replace=False)
        sparse[ys[pick], xs[pick]] = k
    chain = SliceChain(phases=Phases(), calibration_slices=3, training_labels=sparse)
    done = _push(chain, acq.slices)
    assert type(chain.phase_model).__name__ == "PixelClassifier"
    assert chain.phase_check is not None and chain.state()["phase_model"] == {"pixel_classifier": True}
    labels = np.array([p.labels for p in done])
    truth = _truth_at_shift(acq.labels, done)
    inside = (labels > 0) & (truth > 0)
    assert np.mean(labels[inside] == truth[inside]) >= 0.93


def test_a_saturated_brightest_phase_is_questioned():
    acq = _acquisition(_labels(3, 6, 192, 9), (45, 115, 250))
    saturated = np.mean(acq.slices[:4] == 255)
    assert saturated > 0.05
    estimate = estimate_grey_classes(acq.slices[:4])
    assert estimate.saturated_share == pytest.approx(saturated, rel=1e-6)
    check = check_phases(estimate, Phases())
    assert any("saturated" in w and "'active' has role active" in w for w in check.warnings)
    clean = check_phases(estimate_grey_classes(_acquisition(_labels(3, 6, 192, 9), _LEVELS[3]).slices[:4]), Phases())
    assert not any("saturated" in w for w in clean.warnings)


@pytest.mark.parametrize("seed", [0, 2])
def test_an_edge_halo_between_phases_does_not_take_a_phase_level(seed):
    # two bright phases 25 grey levels apart (129, 154) and a dark pore phase (60): smoothed at
    # 3 px, the blurred pore-active edges form a class of their own between them (a halo); one
    # mixture component per name put a phase level on it (about 97 against 129); the model
    # starts from the classes found instead, the halo fitted aside and left out
    from processing.segment import calibrate_phases

    lab = generate_microstructure((6, 200, 200), spacing_um=(0.05, 0.02, 0.02), particle_radius_um=0.5,
                                  fractions={"pore": 0.24, "electrolyte": 0.2, "active": 0.56}, rng=seed)
    acq = render_acquisition(lab, levels=(60, 154, 129), noise_sigma=6.25, blur_px=1.0, curtaining=0.0,
                             brightness_drift=0.0, drift_px=np.zeros((6, 2)), field_shape=(180, 180), rng=seed + 10)
    slices = [s.astype(np.float32) for s in acq.slices]
    model, check = calibrate_phases(slices, Phases(("pore", "active", "electrolyte")), smooth_px=3.0)
    assert any(c.halo for c in check.estimate.classes)
    assert abs(model.levels[1] - 129) <= 4 and abs(model.levels[2] - 154) <= 7, model.levels
    truth = np.array([0, 1, 3, 2], dtype=np.uint8)[acq.labels]  # grey order: pore, active, electrolyte
    labels = np.array([model.segment(s).labels for s in slices])
    inner = (slice(None), slice(4, -4), slice(4, -4))
    assert np.mean(labels[inner] == truth[inner]) > 0.85


def test_a_degenerate_phase_model_is_a_warning(monkeypatch):
    # a fit that lands two levels on one class (seen on a randomised acquisition: 127.0 and
    # 127.07) must be reported, not used quietly
    from processing import segment

    rng = np.random.default_rng(0)
    grey = np.where(ndimage.gaussian_filter(rng.normal(size=(4, 128, 128)), (0, 4, 4)) > 0, 60.0, 140.0)
    slices = list((grey + rng.normal(0, 5, grey.shape)).astype(np.float32))
    names = Phases(("pore", "electrolyte", "active"))
    _, check = segment.calibrate_phases(slices, names, smooth_px=1.0)
    assert not any("degenerate" in w for w in check.warnings)
    degenerate = segment.PhaseModel(thresholds=(100.0, 130.0), levels=(60.0, 140.0, 140.07), sigmas=(5.0, 5.0, 5.0),
                                    weights=(0.5, 0.25, 0.25))
    monkeypatch.setattr(segment, "fit_phase_model", lambda *a, **k: degenerate)
    _, check = segment.calibrate_phases(slices, names, smooth_px=1.0)
    assert any("degenerate" in w and "140.0 and 140.1" in w for w in check.warnings), check.warnings


def test_two_narrow_classes_beside_a_wide_one_are_not_merged_by_a_common_width():
    # randomised seed 7 of bench_label_chain.py (pore 60, active 129, electrolyte 154; noise 25 % of
    # the step, voids with shine-through): the pore's class is widened by partial volume (sigma 21
    # against 5), the estimate separates the three (D 3.4 and 4.2), but a mixture with one common
    # width put two levels on the active phase (129.0 and 132.8, D 0.3): a degenerate model, quality
    # 22.7 % published for 88.7 % right (150 slices, median slice). Fitted from the classes found,
    # each with its own width: 94.1 %, bias 9.0 -> 4.2 points, quality 92.7 %
    import dataclasses

    from processing.scenarios import random_scenario, render_scenario

    scenario = dataclasses.replace(random_scenario(7, n_slices=150), n_slices=14, drop_slices=(), charging_slices=())
    rendered = render_scenario(scenario)
    chain = SliceChain(phases=Phases(scenario.phase_names), calibration_slices=10, roi="auto", smooth_px="auto")
    done = []
    for k, pixels in enumerate(rendered.slices):
        done += chain.push(SliceImage(pixels, k + 1, f"s{k + 1}.tif", None, None))
    check = chain.phase_check
    assert any("each with its own width" in note for note in check.notes), check.notes
    assert not any("degenerate" in w for w in check.warnings), check.warnings
    first, truth = done[0], rendered.truth.labels[0]  # slice 1 is the canvas: no drift
    both = (first.labels > 0) & (truth > 0)
    assert np.mean(first.labels[both] == truth[both]) > 0.92  # 0.898 with the common width
    assert first.quality > 0.8  # it was 0.19: the degenerate model knew it was guessing


def _striped_two_phase(seed=3):
    """Two phases (60, 190; noise 40) with leftover curtain stripes on the lower half of the
    bright phase: columns 6 px wide, half of them darkened by 15-35 grey levels. Returns the
    slices and the truth in the three names' labels (1 = dark, 3 = bright)."""
    lab = generate_microstructure((4, 216, 216), particle_radius_um=0.5, rng=seed)
    acq = render_acquisition(np.where(lab == 3, 1, 2).astype(np.uint8), levels=(60, 190), drift_px=np.zeros((4, 2)),
                             field_shape=(192, 192), noise_sigma=40.0, curtaining=0.0, brightness_drift=0.0, rng=5)
    rng = np.random.default_rng(1)
    slices = []
    for grey, truth in zip(acq.slices, acq.labels):
        depth = rng.uniform(-35, -15, 33)
        stripes = np.where(rng.random(33) < 0.5, depth, 0.0).repeat(6)[:192]
        lower = np.arange(192)[:, None] >= 96
        slices.append(grey.astype(np.float32) + stripes[None, :] * lower * (truth == 2))
    return slices, np.where(acq.labels == 1, 1, 3)


def test_auto_pre_filter_does_not_take_leftover_stripes_for_a_phase():
    # smoothed at 3 px the stripes become a plateau of their own, a third class weakly separated
    # from the bright phase (D about 2.1) that no narrower pre-filter shows; with a third name
    # free, trusting it named the stripes 'electrolyte'. Two phases are rendered: two are found.
    from processing.segment import _CLEAR_SEPARATION, AUTO_SMOOTH_PX, calibrate_phases

    slices, truth = _striped_two_phase()
    at_widest = estimate_grey_classes(slices, smooth_px=AUTO_SMOOTH_PX[-1])
    assert at_widest.n_classes == 3 and min(at_widest.separation) < _CLEAR_SEPARATION  # the trap is there
    model, check = calibrate_phases(slices, Phases(), smooth_px="auto")
    assert model.smooth_px < AUTO_SMOOTH_PX[-1]
    assert check.estimate.n_classes == 2 and check.empty_names == ("electrolyte",)
    labels = np.array([model.segment(s).labels for s in slices])
    assert np.mean(labels == truth) >= 0.97


def test_auto_pre_filter_still_finds_a_phase_only_smoothing_separates():
    # three phases, the two bright ones 30 levels apart under noise 60: two classes at 1 px, three
    # from 1.5 px on (a stable structure, though D is about 2.1 at 1.5 px): a wider pre-filter
    from processing.segment import calibrate_phases

    lab = generate_microstructure((4, 216, 216), particle_radius_um=0.5, rng=3)
    acq = render_acquisition(lab, levels=(60, 120, 150), drift_px=np.zeros((4, 2)), field_shape=(192, 192),
                             noise_sigma=60.0, curtaining=0.0, brightness_drift=0.0, rng=5)
    slices = [s.astype(np.float32) for s in acq.slices]
    assert estimate_grey_classes(slices, smooth_px=1.0).n_classes == 2
    model, check = calibrate_phases(slices, Phases(), smooth_px="auto")
    assert model.smooth_px > 1.0 and check.estimate.n_classes == 3 and check.ok, check.warnings
    labels = np.array([model.segment(s).labels for s in slices])
    assert np.mean(labels == acq.labels) >= 0.9


def _thin_dark_layer(seed, *, layer=True, noise=4.0, blur=0.8, n=6, size=160):
    """Active particles (150) in electrolyte (105) and, with `layer`, a pore layer (40) one pixel
    thick around every particle (the electrolyte pixels touching it), blurred: the pore has no
    histogram mode of its own (known by construction: the truth labels)."""
    lab = generate_microstructure((n, size + 24, size + 24), particle_radius_um=0.3, rng=seed)
    active = lab == 3
    truth = np.where(active, 3, 2).astype(np.uint8)
    if layer:
        truth[np.array([ndimage.binary_dilation(a) for a in active]) & ~active] = 1
    return render_acquisition(truth, levels=(40, 105, 150), drift_px=np.zeros((n, 2)), field_shape=(size, size),
                              noise_sigma=noise, blur_px=blur, rng=seed)


@pytest.mark.parametrize("seed, noise", [(1, 4.0), (2, 8.0)])
def test_a_thin_dark_layer_without_a_mode_is_the_missing_name_and_is_labelled(seed, noise):
    from dataclasses import replace

    from processing.segment import PhaseModel, calibrate_phases

    acq = _thin_dark_layer(seed, noise=noise)
    model, check = calibrate_phases(acq.slices[:3], Phases())
    assert len(check.estimate.phase_classes) == 2  # the layer has no mode: two classes for three names
    assert check.estimate.dark_ridges.strong
    assert check.thin_name == "pore" and check.label_values == (2, 3) and check.empty_names == ()
    assert not check.naming_unsure  # the dark lines say which name it is
    warning = next(w for w in check.warnings if "phases are named" in w)
    assert "thin dark lines" in warning and "called electrolyte, active" in warning
    truth = acq.labels[3:]
    labels = np.array([model.segment(s).labels for s in acq.slices[3:]])
    # the same model without the cue: the darker class named pore by the dark-to-bright order
    by_order = replace(model, thin_label=0, label_values=(1, 3))
    before = np.array([by_order.segment(s).labels for s in acq.slices[3:]])
    accuracy, accuracy_before = np.mean(labels == truth), np.mean(before == truth)
    assert accuracy_before < 0.6 and accuracy >= 0.93, (accuracy_before, accuracy)
    pore = labels == 1
    assert np.mean(truth[pore] == 1) >= 0.6 and np.mean(pore[truth == 1]) >= 0.45
    bias = [100 * (np.mean(labels == k) - np.mean(truth == k)) for k in (1, 2, 3)]
    assert max(abs(b) for b in bias) <= 6.0, bias
    again = PhaseModel.from_dict(model.to_dict())
    assert np.array_equal(again.segment(acq.slices[3]).labels, labels[0])


def test_without_a_thin_dark_layer_the_missing_name_is_an_unsure_warning():
    acq = _thin_dark_layer(1, layer=False)
    check = check_phases(estimate_grey_classes(acq.slices[:3]), Phases())
    assert check.estimate.dark_ridges.share < 0.007  # noise alone: no dark lines below the darkest class
    assert check.thin_name is None and check.empty_names == ("electrolyte",)
    warning = next(w for w in check.warnings if "phases are named" in w)
    assert "UNSURE" in warning and "if the classes are really electrolyte, active" in warning
    assert check.naming_unsure
    # the mixture's levels name the classes electrolyte and active: the other reading keeps the pore
    by_levels = check_phases(check.estimate, Phases(), model_levels=(40.0, *(c.level for c in check.estimate.phase_classes)))
    warning = next(w for w in by_levels.warnings if "phases are named" in w)
    assert "called electrolyte, active" in warning and "if the classes are really pore, active" in warning
