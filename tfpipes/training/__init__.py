"""Training: one cadence (when to log, checkpoint, evaluate, stop) over runners per strategy.

Public pieces: :class:`TrainConfig`, :class:`TrainResult`, :func:`train`. Inside:
``dispatch.train`` reads the environment and picks a runner; ``controller`` is the cadence;
``runner`` the contract every strategy's runner implements (``default_runner``: default,
OneDevice, Mirrored, MultiWorkerMirrored; ``ps_runner``: ParameterServerStrategy, whose
workers and ps serve through ``ps_serve``); ``step`` the loss and optimizer they share;
``trainer`` the default step; ``compat`` what a resume is checked against.
"""

from tfpipes.training.config import TrainConfig, TrainResult
from tfpipes.training.dispatch import train

__all__ = ["TrainConfig", "TrainResult", "train"]
