"""How well can any pixel classifier label each randomised scenario? A supervised ceiling.

The label-accuracy targets (97 % median, 93 % worst) are asked of an unsupervised chain that
sees only grey slices. Some scenarios may not carry that much information: 1-px pores under
2 px of blur, four phases 5 % of the grey range apart under 25 % noise. This benchmark measures
what a classifier that is *given the truth* reaches on the same slices, so that the gap between
revwatch and the target splits into what the data allow and what the algorithms lose.

Per scenario (the same as ``bench_label_chain.py`` at the same seed and slice count): a random
forest on multiscale features (:func:`processing.segment.fit_pixel_classifier`, the classifier
revwatch offers users, with a 0.5 px smallest scale) is trained on a random quarter of the pixels of
nine slices spread over the run, placed side by side and labelled by the truth, so that it has seen
the run's brightness drift and curtains; it then labels every ``--every``-th other slice (injected fault slices left out: their grey is not the phases').
Each labelled slice is scored exactly as the chain's (``bench_acquisitions.compare_slice``: at
its best offset, on assigned sample pixels), and the phase-fraction bias of the worst phase over
the labelled slices (points). The forest is not the best possible classifier,
so the ceiling is an estimate, not a bound; but a scenario where a forest trained on the truth
stays below 97 % is one on which no unsupervised chain can be expected to reach it.

The slices are put onto the canvas of slice 0 (where the truth is) at their *true* shift, with
the chain's own bilinear :func:`processing.align.apply_shift`: the ceiling is of labelling, not of
registration, and subpixel offsets cost it no more than they cost a well-registered chain.

Run::

    PYTHONPATH=. python tests/benchmarks/bench_label_ceiling.py --seeds 0 16 --slices 150

On 3f6ed5c (2 cores, load 4-5, 26 min): the forest's median slice accuracy over the 16 scenarios
is median 95.61 %, worst 76.01 % (seed 13); 10 of the 16 are below 97 %, 3 below 93 %; its
worst-phase |bias| is median 0.33, worst 8.36 points. Beside the chain (``bench_label_chain.py``
on ea4c97e, median slice accuracy / worst-phase bias), forest first:

====  ===============  ================  =============================================
seed  forest           chain             scenario
====  ===============  ================  =============================================
0     95.33 / +0.37    96.03 / -4.40     faceted r120, noise 13 %
1     98.63 / +0.28    97.67 / +0.44     ellipsoid r32, noise 9 %
2     99.69 / -0.03    99.21 / -0.35     faceted r47, noise 12 %
3     94.15 / -1.48    93.23 / -2.06     2 phases, sphere r9, noise 24 %
4     96.13 / +3.79    89.25 / -2.93     4 phases, ellipsoid r108, noise 24 %
5     94.60 / +0.47    85.49 / +3.64     4 phases, r22, noise 10 %
6     98.45 / -0.19    96.16 / +1.62     r50, noise 22 %
7     92.26 / -0.16    80.62 / +14.29    r25, noise 25 %
8     94.66 / +0.74    57.92 / +29.90    r7, 1-px pores at interfaces, noise 5 %
9     85.11 / +2.14    73.45 / -6.90     4 phases, faceted r26, tilted curtains
10    95.89 / -1.16    74.55 / +18.99    4 phases, faceted r83
11    99.81 / -0.01    99.43 / -0.19     2 phases, r126
12    99.46 / +0.15    99.34 / +0.08     sphere r93
13    76.01 / +8.36    48.52 / +27.64    4 phases, faceted r7, noise 21 %
14    95.11 / +0.26    68.41 / -8.19     4 phases, faceted r63
15    99.05 / +0.12    96.74 / +4.53     faceted r138
====  ===============  ================  =============================================

Where the two are close (0, 1, 2, 3, 11, 12) the chain is near what the slices allow; seed 0's
forest loses on a few slices the chain corrects better (worst 80 %). The large gaps (5, 7, 8, 9,
10, 13, 14) and the bias (the forest's median 0.33 points against the chain's 4) are the chain's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).absolute().parents[2]))
from bench_acquisitions import best_offset, compare_slice

from processing.align import apply_shift
from processing.scenarios import random_scenario, render_scenario
from processing.segment import fit_pixel_classifier

TRAINING_SLICES = 9


def ceiling(seed, n_slices, every):
    """Slice accuracies of the truth-trained forest on one scenario, and its phase-fraction bias
    (points, per phase, over the labelled slices)."""
    scenario = random_scenario(seed, n_slices=n_slices)
    rendered = render_scenario(scenario)
    truth = rendered.truth
    k = len(scenario.phase_names)
    faults = {*truth.drop_slices, *truth.charging_slices}
    sizes = truth.pixel_size_um
    usable = [i for i in range(n_slices) if i not in faults and sizes[i] == sizes[0]]
    # training slices spread over the run, so the forest has seen its brightness drift and curtains
    train = [usable[int(f * (len(usable) - 1))] for f in np.linspace(0.05, 0.95, TRAINING_SLICES)]
    rng = np.random.default_rng(seed)

    def on_canvas(i):
        return apply_shift(rendered.slices[i].astype(np.float32), truth.drift_px[i])

    images, strokes = [], []
    for i in train:
        aligned, valid = on_canvas(i)
        images.append(aligned)
        # a quarter of the pixels of each: as good a forest, a quarter of the training time
        strokes.append(truth.labels[i] * (valid & (rng.random(valid.shape) < 0.25)))
    # sigma_min 0.5: the default 1 px smallest scale loses 1-px pores (seed 8, trained on three slices: 92.3 % against 94.7 %)
    model = fit_pixel_classifier(np.hstack(images), np.hstack(strokes), sigma_min=0.5, rng=seed, n_jobs=1)
    accuracy, counts = [], np.zeros((2, k))
    for i in usable[::every]:
        if i in train:
            continue
        aligned, valid = on_canvas(i)
        c = compare_slice(model.segment(aligned, valid=valid).labels, truth.labels[i], k)
        if c["compared"] >= 100:
            accuracy.append(c["correct"] / c["compared"])
            counts += c["agent_counts"], c["truth_counts"]
    bias = 100 * (counts[0] / counts[0].sum() - counts[1] / counts[1].sum())
    return scenario, np.array(accuracy), bias


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs=2, default=(0, 16), metavar=("FIRST", "STOP"),
                        help="scenario seeds FIRST..STOP-1 (default 0 16)")
    parser.add_argument("--slices", type=int, default=150, help="slices per scenario (default 150)")
    parser.add_argument("--every", type=int, default=10, help="label every N-th slice (default 10)")
    args = parser.parse_args(argv)
    print(f"{'seed':>4} {'ceiling med':>11} {'worst':>6} {'bias':>6}  {'per phase':<24} {'n':>3} {'s':>4}  scenario")
    medians, worst_bias = [], []
    for seed in range(*args.seeds):
        t0 = time.perf_counter()
        scenario, accuracy, bias = ceiling(seed, args.slices, args.every)
        medians.append(np.median(accuracy))
        worst_bias.append(np.abs(bias).max())
        print(f"{seed:4d} {100 * medians[-1]:11.2f} {100 * accuracy.min():6.2f} {bias[np.argmax(np.abs(bias))]:+6.2f}  "
              f"{'/'.join(f'{b:+.1f}' for b in bias):<24} {accuracy.size:3d} "
              f"{time.perf_counter() - t0:4.0f}  {scenario.describe()}", flush=True)
    medians = np.array(medians)
    print(f"over {len(medians)} scenarios: ceiling (median slice) median {100 * np.nanmedian(medians):.2f} % "
          f"worst {100 * np.nanmin(medians):.2f} %; below 97 %: {int(np.sum(medians < 0.97))}, "
          f"below 93 %: {int(np.sum(medians < 0.93))}; worst-phase |bias| median {np.median(worst_bias):.2f} "
          f"worst {np.max(worst_bias):.2f} points")


if __name__ == "__main__":
    main()
