"""The shard writer: the TFRecord files of one split, written in block order.

Chunk i of a block goes to shard ``(i + rows so far) % num_shards``, so shards stay within one
row of each other; each shard's size and CRC32C are kept as it is written, for the manifest.
Files are created exclusively inside the staging directory; nothing here commits.
"""

from __future__ import annotations

import os

from tfpipes.preprocess.crc32c import crc32c_extend_array
from tfpipes.preprocess.encoding import Chunks


class SplitWriter:
    """N shard files of one split; chunk i of a block goes to shard (i + rotation) % N."""

    def __init__(self, root: str, split: str, num_shards: int, compression: str):
        os.makedirs(os.path.join(root, split))
        ext = ".tfrecord.gz" if compression == "GZIP" else ".tfrecord"
        self.rel = [f"{split}/part-{i:05d}-of-{num_shards:05d}{ext}" for i in range(num_shards)]
        self.fds = [
            os.open(os.path.join(root, r), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            for r in self.rel
        ]
        self.rows = [0] * num_shards
        self.sizes = [0] * num_shards
        self.crcs = [0] * num_shards
        self.next = 0  # rotates which shard gets the larger chunk, keeping shards within 1 row

    def write(self, chunks: Chunks) -> None:
        k = len(self.fds)
        for i, (data, rows) in enumerate(zip(chunks.data, chunks.rows)):
            if not rows:
                continue
            shard = (i + self.next) % k
            view = memoryview(data)
            while view:
                view = view[os.write(self.fds[shard], view) :]
            self.crcs[shard] = crc32c_extend_array(self.crcs[shard], data)
            self.sizes[shard] += len(data)
            self.rows[shard] += rows
        self.next = (self.next + sum(chunks.rows)) % k

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def checksums(self) -> dict[str, tuple[int, str]]:
        return {r: (s, f"{c:08x}") for r, s, c in zip(self.rel, self.sizes, self.crcs)}
