"""Subcommands of the tfpipes CLI, one module per group; see tfpipes.cli."""

from __future__ import annotations

import argparse


def add_command(sub, name: str, handler=None, **kwargs) -> argparse.ArgumentParser:
    """Subcommand ``name`` of ``sub`` (``add_parser``'s keywords), run by ``handler`` (none
    for a group of subcommands); its description and epilog are printed as written."""
    p = sub.add_parser(name, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)
    if handler is not None:
        p.set_defaults(handler=handler)
    return p
