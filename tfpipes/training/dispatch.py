"""``train()``: read the environment once, pick the runner for the strategy, hand it to the
controller.

The environment is read here and nowhere below: ``TF_CONFIG`` and the devices (through
:func:`tfpipes.strategy.resolve_from_environment`), the peer wait
(``TrainConfig.peer_timeout``, else ``$TFPIPES_PEER_TIMEOUT``, else 300 s); the values go
down as arguments.
"""

from __future__ import annotations

import os

from tfpipes import peers
from tfpipes import strategy as strategy_lib
from tfpipes.training import controller, default_runner, ps_runner, ps_serve
from tfpipes.training.config import TrainConfig, TrainResult
from tfpipes.training.tf_settings import settings_restored

# The runner module of each strategy kind (``check_role``, ``connect``, ``open_runner``).
RUNNERS = {
    "default": default_runner,
    "one_device": default_runner,
    "mirrored": default_runner,
    "multi_worker": default_runner,
    "parameter_server": ps_runner,
}


def train(cfg: TrainConfig) -> TrainResult:
    """Train (or resume training) until ``cfg.train_steps``; evaluate; write metrics.

    Under ParameterServerStrategy a worker or ps task serves instead and never returns.
    Raises UserError for a bad data set, an unknown model, or a model dir of another run;
    RetryableError (exit 138) when a peer or the storage is unreachable, or on SIGTERM
    (preemption: a checkpoint is written first, where the strategy allows it).
    """
    cfg.validate()
    res = strategy_lib.resolve_from_environment(cfg.strategy or None)
    timeout = cfg.peer_timeout or peers.peer_timeout()
    if res.kind == "parameter_server":
        # Report a dead peer to the caller at once instead of retrying the connection for
        # ever: what lets the chief name a lost ps and a worker notice a dead chief.
        os.environ["GRPC_FAIL_FAST"] = "use_caller"
        if res.task_type in ("worker", "ps"):
            ps_serve.serve_task(cfg, res)
    runners = RUNNERS[res.kind]
    runners.check_role(cfg, res)
    with settings_restored():
        return controller.run(cfg, res, runners, timeout)
