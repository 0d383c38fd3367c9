"""RunResult.to_json() gives exactly the keys README's "Result JSON" table documents, with the
documented types; a run without a topology gives the "always" keys only."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from moesim.inputs.config import Scenario, ServeSpec
from moesim.planning.evaluate import evaluate
from moesim.planning.serving import serve

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = Scenario(placement="EP8", topology="dgx-h100", phase="decode", batch=4, context=64,
                    fidelity="analytic")


def _documented(title: str = "### Result JSON (stable keys)") -> dict[str, tuple[str, str]]:
    """key -> (type, when) from a README key table (the section under `title`)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split(title, 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| (\w+) \|", section, flags=re.M)
    assert rows, "README has no result table"
    return {key: (kind.strip(), when) for key, kind, when in rows}


def _is(value: Any, kind: str) -> bool:
    """Whether a JSON value has the README's type."""
    if kind.endswith(" or null") and value is None:
        return True
    kind = kind.removesuffix(" or null")
    if kind.startswith("list of "):
        item = {"objects": "object", "integers": "integer", "numbers": "number"}[kind[8:]]
        return isinstance(value, list) and all(_is(v, item) for v in value)
    checks = {
        "object": lambda v: isinstance(v, dict),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    }
    return checks[kind](value)


@pytest.mark.parametrize("timed", [True, False])
def test_result_keys_and_types_match_the_readme(timed: bool) -> None:
    """Timed: every documented key; untimed: the "always" keys. Each value has its type, and
    the dict survives a JSON round trip unchanged (plain JSON types only)."""
    scenario = SCENARIO if timed else SCENARIO.model_copy(update={"topology": None})
    result = evaluate(scenario).to_json()
    documented = _documented()
    expected = {k for k, (_, when) in documented.items() if timed or when == "always"}
    assert set(result) == expected
    for key in expected:
        assert _is(result[key], documented[key][0]), f"{key}: {type(result[key]).__name__}"
    assert json.loads(json.dumps(result)) == result


@pytest.mark.parametrize("slo", [True, False])
def test_serving_keys_and_types_match_the_readme(slo: bool) -> None:
    """ServeResult.to_json() gives exactly README's serving keys with their types (goodput is
    null without an SLO), and survives a JSON round trip unchanged."""
    spec = ServeSpec(concurrency=2, requests=4, isl=32, osl=4,
                     slo_ttft_ms=100.0 if slo else None)
    result = serve(SCENARIO.model_copy(update={"serve": spec})).to_json()
    documented = _documented("### Serving JSON (stable keys)")
    assert set(result) == set(documented)
    for key, (kind, _) in documented.items():
        assert _is(result[key], kind), f"{key}: {type(result[key]).__name__}"
    for key in ("ttft_s", "tpot_s", "itl_s", "e2e_s"):
        assert set(result[key]) == {"mean", "p50", "p90", "p99"}
    assert (result["goodput_per_s"] is None) is not slo
    assert json.loads(json.dumps(result)) == result
