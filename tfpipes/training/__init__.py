"""Training: one cadence (when to log, checkpoint, evaluate, stop) over runners per strategy.

Public pieces: :class:`TrainConfig`, :class:`TrainResult`, :func:`train`. Inside:
``dispatch.train`` reads the environment and picks a runner; ``controller`` is the cadence;
``runner`` the contract every strategy's runner implements (``default_runner``: default,
OneDevice, Mirrored, MultiWorkerMirrored; ``ps_runner``: ParameterServerStrategy, whose
workers and ps serve through ``ps_serve``); ``step`` the loss and optimizer they share;
``trainer`` the default step; ``compat`` what a resume is checked against.
"""

from tfpipes.training.config import TrainConfig, TrainResult

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str):
    # train() is imported on first use: it brings TensorFlow, which the parameter surface
    # (config, params: what `--help` and the KFP compiler read) must not.
    if name == "train":
        from tfpipes.training.dispatch import train

        return train
    raise AttributeError(name)
