"""Training: one cadence (when to log, checkpoint, evaluate, stop) over runners per strategy.

Public pieces: :class:`TrainConfig`, :class:`TrainResult`, :func:`train`.
"""

from tfpipes.training.config import TrainConfig, TrainResult
from tfpipes.training.loop import train

__all__ = ["TrainConfig", "TrainResult", "train"]
