"""Small directory trees for storage tests: write one from {relative path: bytes}."""

from __future__ import annotations

import os


def write_tree(root, files: dict[str, bytes]) -> None:
    """Write ``files`` (``/``-separated relative paths → contents) under ``root``."""
    for name, data in files.items():
        path = os.path.join(root, *name.split("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
