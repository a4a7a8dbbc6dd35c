"""A content-addressed file store for what a transcript entry only points at.

Attachments, HTML originals, untrimmed bodies (and raw messages, when asked to keep them) are
written here, named by their SHA-256 (`blob:sha256:<hex>`), before the message that
references them is handed to the core. Why files and not a database table: a 10 MB attachment
in a row would go through every group commit, the WAL and each database backup; here it is
written once, outside the transaction. Content addressing makes a write idempotent (a
re-fetch after a cut, or the same attachment twice, writes nothing new) and the order safe:
a batch's files are durable before any committed row names them, so a crash leaves at worst
an unreferenced file, never a reference to nothing. Durability is paid once per batch, not
per file (one `syncfs` on Linux, measured ~5x cheaper than an fsync per file and folder
here; elsewhere an fsync per file). Several gateway processes may share the folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PREFIX: Final = "blob:sha256:"


@dataclass(frozen=True, slots=True)
class BlobRef:
    sha256: str
    size: int

    @property
    def url(self) -> str:
        return PREFIX + self.sha256


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
def _syncfs() -> Callable[[int], int] | None:
    """Linux's syncfs(2): flush one filesystem (not all of them, as sync(2) would)."""
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


class BlobStore:
    """Files under `root/ab/abcdef…`; safe to repeat and to run in several processes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"{sha256!r} is not a SHA-256 in hex")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes) -> BlobRef:
        digest = sha256_of(data)
        self.put_many({digest: data})
        return BlobRef(digest, len(data))

    def put_many(self, blobs: Mapping[str, bytes]) -> None:
        """Store every blob (keyed by its SHA-256); return when all are durable. Each file is
        written under a temporary name, made durable, and only then renamed into place: a
        name that exists always holds its whole content."""
        pending: list[tuple[str, Path]] = []
        try:
            for digest, data in blobs.items():
                target = self.path(digest)
                if target.exists():
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                pending.append((tmp, target))
            if not pending:
                return
            self._durable([Path(tmp) for tmp, _ in pending])
            for tmp, target in pending:
                os.replace(tmp, target)
            self._durable([], folders={t.parent for _, t in pending})
            pending.clear()
        finally:
            for tmp, _target in pending:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _durable(self, files: list[Path], folders: set[Path] | None = None) -> None:
        syncfs = _syncfs()
        if syncfs is not None:
            fd = os.open(self.root, os.O_RDONLY)
            try:
                if syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        for path in [*files, *(folders or ())]:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def get(self, url_or_sha256: str) -> bytes:
        digest = url_or_sha256.removeprefix(PREFIX)
        data = self.path(digest).read_bytes()
        if sha256_of(data) != digest:
            raise ValueError(f"blob {digest} is damaged (its content does not match its name)")
        return data

    def exists(self, url_or_sha256: str) -> bool:
        return self.path(url_or_sha256.removeprefix(PREFIX)).exists()
