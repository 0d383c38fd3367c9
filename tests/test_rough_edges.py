"""Rough edges a new user hits: validate compare on an uncalibrated topology says to calibrate
first; calibrate nccl-tests' table columns never run together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from moesim.cli import main
from tests.test_fuzz_cli import _good_measurement

ROOT = Path(__file__).resolve().parents[1]
LOG = ROOT / "tests" / "data" / "nccl_tests" / "h100_16gpu_2node_alltoall_xxrjun.txt"


def test_validate_compare_on_an_uncalibrated_topology_says_to_calibrate(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """cpu-loopback carries stated defaults: the comparison says to calibrate first; a
    calibrated preset (dgx-h100, fitted to published logs) gets no such note."""
    path = tmp_path / "m.json"
    path.write_text(json.dumps(_good_measurement()))
    main(["validate", "compare", str(path), "--topology", "cpu-loopback"])
    assert "not calibrated on measurements" in capsys.readouterr().out
    main(["validate", "compare", str(path), "--topology", "dgx-h100"])
    assert "not calibrated" not in capsys.readouterr().out


def test_calibrate_table_columns_stay_apart(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Every row of the fit table splits into as many fields as its header (a 14-character
    byte count once ran into the rank column)."""
    assert main(["calibrate", "nccl-tests", str(LOG), "-t", "h100-2node-ib", "-o",
                 str(tmp_path / "cal.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("op ") and "ran" in line)
    width = len(lines[header].replace("measured us", "m").replace("before us", "b")
                .replace("after us", "a").split())
    rows = []
    for line in lines[header + 1:]:
        if line.startswith("op "):  # the size-band table follows
            break
        rows.append(line)
    assert any("17,179,869,184" in row for row in rows)
    assert rows and all(len(row.split()) == width for row in rows)


def test_outputs_get_the_permissions_a_plain_write_would(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp (owner-only); the renamed output must not keep that."""
    import os

    from moesim.output.files import write_atomic

    mask = os.umask(0o022)
    try:
        path = write_atomic(tmp_path / "out.json", "{}")
        assert path.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
