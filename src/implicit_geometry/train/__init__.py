"""Training log-bilinear models: numerically stable losses and optimizers that keep converging in direction."""

from implicit_geometry.train.losses import CrossEntropy
from implicit_geometry.train.simulator import OptimizerConfig, Simulator, record_steps

__all__ = ["CrossEntropy", "OptimizerConfig", "Simulator", "record_steps"]
