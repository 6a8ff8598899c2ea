"""Writing bytes to a file descriptor whole, whatever each ``os.write`` takes."""

from __future__ import annotations

import os

__all__ = ["write_all"]


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` (a pipe may take a large write in several parts); raises OSError when it is gone."""
    written = os.write(fd, data)
    if written < len(data):
        view = memoryview(data)[written:]
        while view:
            view = view[os.write(fd, view) :]
