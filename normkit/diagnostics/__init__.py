"""See what normalisation does: an activation recorder for :func:`normkit.fit`, and experiments
(``normkit experiment NAME``) that measure the lesson's claims on real data."""

from .experiments import EXPERIMENTS, Result, run
from .plots import plot
from .population import running_stats_gap, set_population_stats
from .recorder import ActivationRecorder

__all__ = ["ActivationRecorder", "EXPERIMENTS", "Result", "run", "plot", "running_stats_gap",
           "set_population_stats"]
