"""How the process runner and its children frame and encode their messages on a pipe.

A frame is a 4-byte little-endian length, then that many bytes: one codec byte and
the encoded message (a tuple, see the tags in ``_child``). Messages are encoded with
:mod:`marshal` when every value in them is a plain built-in (payloads parsed from
JSON always are, and so are most results): it is faster than pickling and needs no
class lookups. Anything else (a handler returning its own objects) falls back to
pickle, whose errors the sender handles.

Both sides write a frame with one ``os.write`` and read whatever is waiting with one
``os.read``: several answers that arrived together cost one system call and one
wake-up, not two reads per message as :class:`multiprocessing.connection.Connection`
makes.
"""

from __future__ import annotations

import marshal
import os
import pickle
import struct
from typing import Any, Final

__all__ = ["FrameReader", "encode"]

_LENGTH: Final = struct.Struct("<I")
_MARSHAL: Final = 0x6D  # "m"
_PICKLE: Final = 0x70  # "p"
#: Read at least this much at once: every answer waiting in the pipe comes in one read.
_READ_BYTES: Final = 1 << 16


def encode(message: tuple[Any, ...]) -> bytes:
    """One frame holding ``message``; raises what pickling raises for a value neither codec can encode."""
    try:
        body = b"m" + marshal.dumps(message)
    except ValueError:  # an object marshal does not know, or nested too deeply for it
        body = b"p" + pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


class FrameReader:
    """Reassembles the frames read from one pipe, however the reads cut them."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._buffer = bytearray()

    def read(self) -> list[Any] | None:
        """Read what is waiting (blocks until something is) and return the complete messages; None at EOF."""
        data = os.read(self.fd, max(_READ_BYTES, self._missing()))
        if not data:
            return None
        if not self._buffer and len(data) >= 4 and len(data) == 4 + _LENGTH.unpack_from(data)[0]:
            return [_decode(data, 4)]  # exactly one whole frame: the common case, without copying
        self._buffer += data
        return self._split()

    def _missing(self) -> int:
        if len(self._buffer) < 4:
            return 0
        length: int = _LENGTH.unpack_from(self._buffer)[0]
        return 4 + length - len(self._buffer)

    def _split(self) -> list[Any]:
        messages = []
        buffer = self._buffer
        start = 0
        while len(buffer) - start >= 4:
            end = start + 4 + _LENGTH.unpack_from(buffer, start)[0]
            if end > len(buffer):
                break
            messages.append(_decode(memoryview(buffer)[start:end], 4))
            start = end
        del buffer[:start]
        return messages


def _decode(frame: bytes | memoryview, offset: int) -> Any:
    codec = frame[offset]
    body = memoryview(frame)[offset + 1 :]  # no copy of a large message
    if codec == _MARSHAL:
        return marshal.loads(body)
    if codec == _PICKLE:
        return pickle.loads(body)
    raise ValueError(f"unknown codec byte {codec!r} in a frame from the other process")
