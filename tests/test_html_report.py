"""HTML report: one self-contained page that renders in a real headless browser."""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from moesim.errors import ConfigError
from moesim.inputs.config import Scenario
from moesim.output.html_report import check_compare_dict, render_html, write_html_report
from moesim.planning.compare import run_compare

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--enable-logging=stderr", "--v=0",
]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str, Path]:
    """A small comparison (EP2 and TP2 plus an infeasible EP16 on dgx-h100), its HTML and file."""
    base = Scenario(topology="dgx-h100", phase="decode", batch=4, context=64,
                    fidelity="analytic")
    compare = run_compare(base, ["EP2", "TP2", "EP16"], None, None, plot_data=True,
                          sweep_batches=[1, 4], progress=None)
    path = write_html_report(compare, tmp_path_factory.mktemp("html") / "report.html")
    return compare, path.read_text(encoding="utf-8"), path


def test_page_is_self_contained(page: tuple[dict[str, Any], str, Path]) -> None:
    """Every image is a data URI, the CSS is inline, and nothing names an external resource
    (no <link>, no src/href to a URL, no CSS url() or @import)."""
    _, text, _ = page
    sources = re.findall(r'src="([^"]*)"', text)
    assert len(sources) == 5  # phases, Gantt, traffic, expert load, latency-throughput
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    assert "<link" not in text and "href=" not in text
    assert "url(" not in text and "@import" not in text
    assert "<style>" in text


def test_page_holds_table_infeasible_reasons_and_assumptions(
    page: tuple[dict[str, Any], str, Path]
) -> None:
    """The ranked rows, the infeasible layout with its reason, the trace provenance and the
    topology's sources and calibration all appear on the page."""
    compare, text, _ = page
    assert "<td class=\"text\">EP2</td>" in text and "<td class=\"text\">TP2</td>" in text
    assert "EP16</b> on dgx-h100: placement EP16 needs 16 GPUs but dgx-h100 has 8" in text
    assert "mistralai/Mixtral-8x7B-Instruct-v0.1" in text  # trace metadata: model
    assert "link efficiency / collective launch calibrated" in text
    facts = compare["assumptions"]["topologies"]["dgx-h100"]
    assert facts["sources"] and all(html.escape(s) in text for s in facts["sources"])


def test_non_compare_json_is_rejected() -> None:
    """A Result from `moesim run` is not a comparison: one ConfigError saying how to make one."""
    with pytest.raises(ConfigError, match="not a `moesim compare --json` file"):
        check_compare_dict({"a2a_bytes": 1}, "results.json")
    with pytest.raises(ConfigError):
        render_html({"kind": "other"})


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y "
                    "chromium); the browser rendering check needs it")
def test_page_renders_in_headless_chromium(page: tuple[dict[str, Any], str, Path]) -> None:
    """Chromium loads the page, the inline check finds every plot decoded (naturalWidth > 0)
    and the browser logs no console message (errors would appear as CONSOLE lines)."""
    _, text, path = page
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run(
            [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
             path.resolve().as_uri()],
            capture_output=True, text=True, timeout=60, check=False,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    marker = re.search(r'id="render-check" data-images-ok="(\d+)" data-images-total="(\d+)"',
                       done.stdout)
    assert marker, "the inline image check did not run"
    assert marker.group(1) == marker.group(2) == str(text.count('<img class="plot"')) == "5"
    assert "all 5 plots rendered" in done.stdout
    assert ":CONSOLE" not in done.stderr, done.stderr
