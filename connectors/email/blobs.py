"""A content-addressed file store for what a transcript entry only points at.

Attachments, HTML originals, full (untrimmed) bodies and raw messages are written here, named
by their SHA-256 (`blob:sha256:<hex>`), before the message that references them is handed to
the core. Why files and not a database table: a 10 MB attachment in a row would go through
every group commit, the WAL and each database backup; here it is written once, outside the
transaction. Content addressing makes the write idempotent (a re-fetch after a cut, or the
same attachment twice, writes nothing new) and the order safe: a file is durable (fsync of
the file and its folder) before any committed row names it, so a crash leaves at worst an
unreferenced file, never a reference to nothing. Several gateway processes may share the
folder (a rename into place is atomic).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
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


class BlobStore:
    """Files under `root/ab/abcdef…`; `put` is safe to repeat and to run in several processes."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"{sha256!r} is not a SHA-256 in hex")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes, sha256: str | None = None) -> BlobRef:
        digest = sha256 or sha256_of(data)
        target = self.path(digest)
        if target.exists():
            return BlobRef(digest, len(data))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".incoming-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(target.parent)
        return BlobRef(digest, len(data))

    def get(self, url_or_sha256: str) -> bytes:
        return self.path(url_or_sha256.removeprefix(PREFIX)).read_bytes()

    def exists(self, url_or_sha256: str) -> bool:
        return self.path(url_or_sha256.removeprefix(PREFIX)).exists()


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

