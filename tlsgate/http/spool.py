"""A first-in first-out byte store: memory up to a limit, then a temporary file.

The ``spool`` strategy of on-demand client certificates keeps reading a request body while
the TLS handshake that fetches the certificate is pending (reading is what lets the client's
handshake answer through). The bytes that arrive meanwhile wait here: in memory up to
``on_demand_buffer_limit``, then in a file in ``data_dir`` up to ``on_demand_spool_limit``.
The file is created with a visible name (operators can see the spill) and is removed when
the spool is closed, which the HTTP layer does when the request ends, also on errors.

File writes are synchronous: they go to the page cache and cost microseconds per chunk,
less than a thread hop would.
"""

from __future__ import annotations

import os
import tempfile
from collections import deque
from pathlib import Path

from tlsgate.http.messages import BodyTooLarge


class Spool:
    __slots__ = ("_memory", "_memory_bytes", "memory_limit", "disk_limit", "_directory",
                 "_file", "_read_at", "_write_at", "path", "spilled")

    def __init__(self, memory_limit: int, disk_limit: int, directory: Path) -> None:
        self.memory_limit = memory_limit
        self.disk_limit = disk_limit
        self._directory = directory
        self._memory: deque[bytes] = deque()
        self._memory_bytes = 0
        self._file = None
        self._read_at = self._write_at = 0
        self.path: str | None = None
        self.spilled = 0           # bytes that went to disk, in all

    @property
    def size(self) -> int:
        """Bytes stored and not yet read."""
        return self._memory_bytes + self._write_at - self._read_at

    def write(self, data: bytes) -> None:
        """Store ``data``; raises :class:`BodyTooLarge` past ``disk_limit`` stored bytes."""
        if self.size + len(data) > self.disk_limit:
            raise BodyTooLarge(self.disk_limit)
        if self._file is None and self._memory_bytes + len(data) <= self.memory_limit:
            self._memory.append(bytes(data))
            self._memory_bytes += len(data)
            return
        file = self._file or self._open()
        file.seek(self._write_at)
        file.write(data)
        self._write_at += len(data)
        self.spilled += len(data)

    def read(self, size: int) -> bytes:
        """Up to ``size`` of the oldest bytes, or b"" when empty."""
        if self._memory:
            data = self._memory.popleft()
            self._memory_bytes -= len(data)
            return data
        if self._file is None or self._read_at == self._write_at:
            return b""
        self._file.seek(self._read_at)
        data = self._file.read(min(size, self._write_at - self._read_at))
        self._read_at += len(data)
        if self._read_at == self._write_at:      # drained: reuse the file from its start
            self._read_at = self._write_at = 0
            self._file.truncate(0)
        return data

    def _open(self):
        self._directory.mkdir(parents=True, exist_ok=True)
        self._file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in close()
            dir=self._directory, prefix="tlsgate-spool-", delete=False)
        self.path = self._file.name
        return self._file

    def close(self) -> None:
        self._memory.clear()
        self._memory_bytes = 0
        if self._file is not None:
            self._file.close()
            self._file = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
