"""Flags added to a subcommand's parser only when that subcommand is parsed or its help shown.

Why: the training flags are generated from ``TrainConfig`` (``tfpipes.training.params``), and
importing ``tfpipes.training`` imports TensorFlow (its ``__init__`` imports the training loop),
while ``tfpipes --help`` must answer in well under a second without it.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable


class _LateFlagsParser(argparse.ArgumentParser):
    _late_flags: Callable[[argparse.ArgumentParser], None] | None = None

    def _add_late_flags(self) -> None:
        add, self._late_flags = self._late_flags, None
        if add:
            # TensorFlow's import prints C++ log lines unless told before it loads; this runs
            # before the CLI configures logging (as it does by default: quiet).
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
            os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "2")
            add(self)

    def parse_known_args(self, args=None, namespace=None):
        self._add_late_flags()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._add_late_flags()
        return super().format_help()

    def format_usage(self) -> str:
        self._add_late_flags()
        return super().format_usage()


def add_late_flags(parser: argparse.ArgumentParser, add: Callable[[argparse.ArgumentParser], None]):
    """Call ``add(parser)`` the first time ``parser`` parses or formats its help or usage."""
    # argparse's subparsers action builds every parser with one class; switch this one's.
    parser.__class__ = _LateFlagsParser
    parser._late_flags = add
