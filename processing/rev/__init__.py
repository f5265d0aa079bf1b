"""Representative elementary volume (REV): is the volume acquired so far enough?

The package, one concern per module:

- :mod:`.metrics`: what is tracked (:class:`RevMetric`, the phase fractions over assigned
  voxels, the Table 1 metrics, the default tracked set) and the feature size (mean chord
  lengths) that sets the smallest block and cube of each metric;
- :mod:`.curve`: the **subvolume criterion** (:func:`subvolume_curve`): relative standard
  deviation of a metric over seeded, non-overlapping cubes of edge ``L`` (micrometres);
- :mod:`.kanit`: the **statistical criterion** of Kanit et al. (2003) (:func:`fit_kanit`):
  ``sigma^2(V) = K V^-alpha`` and the relative error of a mean over volumes;
- :mod:`.trend`: the **trend along z** (:func:`slope_test` on correlated units, repeated at
  looks spending a run-wide false-alarm budget, :func:`look_level`; :func:`detect_trend` on
  block means) and the **horizon bound**
  (:func:`horizon_bound`): would the value at the planned depth differ from now?
- :mod:`.tracker`: :class:`RevTracker`, the streaming decision and its latched stop;
- :mod:`.report`: :func:`rev_report`, the offline report of a finished volume.
"""

from .curve import SubvolumeCurve, subvolume_curve
from .kanit import KanitFit, fit_kanit, kanit_from_curve
from .metrics import RevMetric, default_metrics, default_tracked, mean_chords_um, phase_fraction, table1_metrics
from .report import RevReport, rev_report
from .tracker import RevTracker
from .trend import HorizonBound, Trend, detect_trend, horizon_bound, long_run_variance, look_level, slope_test

__all__ = [
    "RevMetric",
    "phase_fraction",
    "default_metrics",
    "default_tracked",
    "table1_metrics",
    "mean_chords_um",
    "SubvolumeCurve",
    "subvolume_curve",
    "KanitFit",
    "fit_kanit",
    "kanit_from_curve",
    "Trend",
    "detect_trend",
    "slope_test",
    "look_level",
    "HorizonBound",
    "horizon_bound",
    "long_run_variance",
    "RevTracker",
    "RevReport",
    "rev_report",
]
