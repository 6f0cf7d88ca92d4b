"""Content fingerprints of the inputs: the ``source_hash`` a data set records and the cache key.

A fingerprint is a sha256 over each input's base name and the CRC32C of its bytes. preprocess
computes it while it streams the inputs (:class:`Tap`); :func:`source_fingerprint` computes the
same value by reading the files, for the cache key before any preprocess runs.
"""

from __future__ import annotations

import hashlib
import os

from tfpipes import storage


def crc_hex(crc) -> str:
    """A ``google_crc32c.Checksum`` as the 8 hex digits fingerprints hash."""
    return crc.hexdigest().decode()


def fingerprint(parts: list[tuple[str, str]]) -> str:
    """sha256 (hex) over ``(path, crc hex)`` pairs, in order; only base names count, so the
    same files copied elsewhere keep their fingerprint."""
    h = hashlib.sha256()
    for path, crc in parts:
        h.update(f"{os.path.basename(path)}\0{crc}\0".encode())
    return h.hexdigest()


def source_fingerprint(files: list[str]) -> str:
    """A content hash of the inputs (name, size, CRC32C of the bytes): the cache key.

    :func:`tfpipes.preprocess.preprocess` computes the same value while it streams the inputs.
    """
    return fingerprint([(path, file_crc_hex(path)) for path in files])


def file_crc_hex(path: str) -> str:
    """CRC32C of the bytes of ``path`` (local or remote), as :func:`crc_hex` writes it."""
    import google_crc32c

    crc = google_crc32c.Checksum()
    with storage.open_read(path) as f:
        while chunk := f.read(8 << 20):
            crc.update(chunk)
    return crc_hex(crc)


class Tap:
    """A read-only file wrapper that counts and checksums the raw bytes passing through."""

    def __init__(self, f) -> None:
        import google_crc32c

        self._f = f
        self.crc = google_crc32c.Checksum()
        self.bytes = 0

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n)
        self.crc.update(data)
        self.bytes += len(data)
        return data

    def readable(self) -> bool:
        return True
