"""Bytes read from a user's text file as UTF-8, or one error naming the file and where.

Every reader of a text input (YAML/JSON, kernel tables, request and dataset JSON lines) checks
its bytes here, so all refuse the same things with the same words: UTF-16/32 text (a byte-order
mark), binary files (NUL bytes) and bytes that are not UTF-8 (with the line and column).
"""

from __future__ import annotations

from pathlib import Path

from moesim.errors import MoesimError

__all__ = ["utf8_text", "read_capped"]

_NEWLINE = b"\n"
_NUL = b"\x00"


def utf8_text(raw: bytes, where: str, error: type[MoesimError], *, line: int | None = None,
              kind: str = "UTF-8 text") -> str:
    """`raw` (a whole file, or its line `line`) as text without a leading UTF-8 byte-order
    mark, or `error` naming `where`. `kind` says what the file should have been (for a
    binary one: "not YAML or JSON text")."""
    first = line in (None, 1)
    if first and raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(f"{where} is UTF-16 or UTF-32 text; save it as UTF-8")
    if _NUL in raw:
        if line is not None:
            where_nul = f"{where} line {line} holds NUL bytes"
        else:
            nul_line = raw.count(_NEWLINE, 0, raw.index(_NUL)) + 1
            where_nul = f"{where} holds NUL bytes (line {nul_line})"
        raise error(f"{where_nul}: it is a binary file, not {kind}; pass the text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        column = exc.start - (raw.rfind(_NEWLINE, 0, exc.start) + 1) + 1
        number = line if line is not None else raw.count(_NEWLINE, 0, exc.start) + 1
        at = f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at line {number}, column {column})"
        raise error(f"{where} {at}; save it as UTF-8") from None
    return text.removeprefix("\ufeff") if first else text


def read_capped(path: Path, where: str, error: type[MoesimError], limit_bytes: int,
                limit_text: str) -> bytes:
    """The bytes of file `path`, or `error` naming `where`: missing, unreadable, or larger
    than `limit_bytes` ("above the N MiB {limit_text}; is it the right file?")."""
    if not path.is_file():
        raise error(f"{where} does not exist")
    try:
        size = path.stat().st_size
        if size > limit_bytes:
            raise error(f"{where} is {size / 2**20:.0f} MiB, above the {limit_bytes >> 20} MiB "
                        f"{limit_text}; is it the right file?")
        return path.read_bytes()
    except OSError as exc:
        raise error(f"cannot read {where}: {exc.strerror}") from None
