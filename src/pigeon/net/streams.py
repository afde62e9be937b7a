"""Small helpers on asyncio streams shared by the SMTP and POP3 sessions."""

from __future__ import annotations

import asyncio

__all__ = ["discard_buffered"]


def discard_buffered(reader: asyncio.StreamReader) -> int:
    """Drop what the reader has received but the session has not read.

    Used before a TLS handshake (RFC 3207 §4.2, RFC 2595 §4): plaintext that arrived after
    STARTTLS/STLS must never be executed.

    asyncio has no public call for this; the reader's buffer is a ``bytearray`` named
    ``_buffer`` in CPython's :mod:`asyncio.streams` (also under uvloop, which reuses it).

    Args:
        reader: the connection's stream reader.

    Returns:
        The number of octets dropped.
    """
    buffer = getattr(reader, "_buffer", None)
    if not isinstance(buffer, bytearray):
        return 0
    size = len(buffer)
    buffer.clear()
    return size
