"""The one UTF-8 / size check every text reader uses (moesim.inputs.text)."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.errors import ConfigError, TraceError
from moesim.inputs.text import read_capped, utf8_text


@pytest.mark.parametrize(("raw", "line", "message"), [
    (b"\xff\xfea\x00", None, "f is UTF-16 or UTF-32 text"),
    (b"ok\nbad\x00\n", None, "f holds NUL bytes (line 2): it is a binary file, not UTF-8 text"),
    (b"bad\x00", 7, "f line 7 holds NUL bytes"),
    (b"ok\ncaf\xe9\n", None, "f is not UTF-8 text (byte 0xe9 at line 2, column 4)"),
    (b"caf\xe9", 5, "f is not UTF-8 text (byte 0xe9 at line 5, column 4)"),
])
def test_bad_bytes_name_the_file_and_where(raw: bytes, line: int | None, message: str) -> None:
    with pytest.raises(TraceError) as caught:
        utf8_text(raw, "f", TraceError, line=line)
    assert message in str(caught.value)


def test_good_text_loses_only_a_leading_byte_order_mark() -> None:
    assert utf8_text("\ufeffcafé".encode(), "f", ConfigError) == "café"
    assert utf8_text("\ufeffx".encode(), "f", ConfigError, line=2) == "\ufeffx"  # mid-file


def test_read_capped(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    with pytest.raises(ConfigError, match="t.csv does not exist"):
        read_capped(path, str(path), ConfigError, 1 << 20, "a table may be")
    path.write_bytes(b"x" * (3 << 20))
    with pytest.raises(ConfigError, match=r"is 3 MiB, above the 1 MiB a table may be; is it"):
        read_capped(path, str(path), ConfigError, 1 << 20, "a table may be")
    path.write_bytes(b"ok")
    assert read_capped(path, str(path), ConfigError, 1 << 20, "a table may be") == b"ok"
