"""The ``tfpipes`` command line.

Each subcommand lives in a module with ``register(subparsers)``; the module must be cheap to
import (TensorFlow, kfp and google-cloud-storage are imported inside the handlers), so that
``tfpipes --help`` answers in well under a second.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tfpipes import __version__
from tfpipes.errors import exit_on_error
from tfpipes.tf_log import set_tf_log_level

# Order is the order shown in --help.
COMMAND_MODULES = [
    "tfpipes.commands.steps",  # preprocess, train, export
    "tfpipes.commands.fanout",  # preprocess-plan, preprocess-part, preprocess-commit
    "tfpipes.commands.pipeline",  # compile, run-local, demo
    "tfpipes.commands.cluster",  # tfjob, local-cluster
    "tfpipes.commands.cluster_api",  # submit, schedule
    "tfpipes.commands.models",  # check-data, evaluate, models list|show|rollback
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tfpipes",
        description=(
            "Kubeflow Pipelines components for distributed TensorFlow training.\n\n"
            "Steps: preprocess (CSV -> sharded TFRecords + schema + stats + split), train (a\n"
            "graph-mode custom loop under tf.distribute, checkpointed and resumable), export\n"
            "(a verified SavedModel in the <base>/<version>/ layout TF Serving reads).\n"
            "Run a step on paths, compile the KFP pipeline, or run it all locally."
        ),
        epilog="Start with `tfpipes demo`. Each command has its own --help.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"tfpipes {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv: TensorFlow's too)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def leading_verbosity(argv: list[str]) -> int:
    """How many ``-v`` the options before the command give (``-v -v``, ``-vv``, ``--verbose``)."""
    count = 0
    for arg in argv:
        if not arg.startswith("-") or arg == "--":
            break
        if arg == "--verbose":
            count += 1
        elif arg.startswith("-") and not arg.startswith("--") and set(arg[1:]) == {"v"}:
            count += len(arg) - 1
    return count


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream it was
    made with: a caller that swaps stderr (a test's capture, a notebook) keeps seeing our lines,
    and a stream closed since is never written to."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: D102 - logging.StreamHandler's attribute
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure_logging(verbose: int) -> None:
    """Quiet by default: our INFO lines only; TensorFlow's C++ and Python chatter only with -vv.

    ``TF_CPP_MIN_LOG_LEVEL`` is set here for this process and, through the environment, for
    every process it starts (tfpipes.tf_log); :func:`main` calls this before parsing, since
    parsing some commands' flags imports TensorFlow. Called again (a second ``main`` in one
    process), it replaces the handler it installed, so the new verbosity holds; a handler
    someone else put on the root logger is left alone.
    """
    set_tf_log_level(verbose)
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    if not root.handlers:
        handler = _StderrHandler()
        handler.setFormatter(
            logging.Formatter(
                "%(asctime)s %(name)s %(levelname)s %(message)s" if verbose else "%(message)s"
            )
        )
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("tensorflow", "absl", "kfp", "urllib3", "google", "h5py"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    configure_logging(leading_verbosity(argv))
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        with exit_on_error(f"tfpipes {args.command}"):
            return int(args.handler(args) or 0)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1


if __name__ == "__main__":
    sys.exit(main())
