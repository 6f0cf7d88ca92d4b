"""Subcommands of the tfpipes CLI, one module per group; see tfpipes.cli."""
