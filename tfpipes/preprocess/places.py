"""The fan-out's own files in a place (a local directory or a gs:// prefix): written with an
owner mark, read back checked."""

from __future__ import annotations

import json
import os
import tempfile

from tfpipes import storage
from tfpipes.errors import UserError


def write_marked(place: str, name: str, text: str, owner: str) -> None:
    """``name`` (``/``-separated) in ``place``; on gs:// carrying ``owner``, the mark that
    proves later that we wrote it (only marked objects are ever removed)."""
    if not storage.is_remote(place):
        storage.write_text(storage.join(place, name), text)
        return
    with tempfile.TemporaryDirectory(prefix="tfpipes-place-") as tmp:
        storage.write_text(os.path.join(tmp, *name.split("/")), text)
        storage.commit_files(tmp, place, [name], owner=owner)


def read_doc(place: str, name: str, fmt: str, what: str, first: str, parse=None):
    """The JSON document ``name`` in ``place``, of format ``fmt`` (``parse``: applied to it);
    UserError when there is none (``first``: the command that writes it) or it is not one
    (``what``)."""
    path = storage.join(storage.normalize(place).rstrip("/"), name)
    if not storage.exists(path):
        raise UserError(f"{place}: no {what} ({name}); run `{first}` first")
    try:
        doc = json.loads(storage.read_text(path))
        if doc.get("format") != fmt:
            raise ValueError(f"format {doc.get('format')!r}")
        return doc, (parse(doc) if parse else None)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not a {what} ({e})") from None
