"""Input fields as command-line flags, by one rule: field `x_y` is flag `--x-y`.

The flag's type and choices come from the field's annotation (a `Literal` gives `choices`, an
`int` an int, a `float` a float, a mapping `KEY=VALUE,...`, anything else a string) and its help
from the field's description, so a new Scenario (or ServeSpec) field is a new flag without
touching the CLI. Values given on the command line override the scenario file; a value pydantic
refuses is named by its flag.
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Sequence
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from moesim.errors import ConfigError
from moesim.inputs.config import Scenario, ServeSpec, load_scenario

__all__ = [
    "RUN_FIELDS",
    "SERVE_FIELDS",
    "ENGINE_FIELDS",
    "add_model_flags",
    "add_scenario_flags",
    "flag_name",
    "scenario_from_args",
    "serve_spec_from_args",
    "scenario_with_serve",
]

# Scenario fields `moesim run` takes as flags (name and description belong in the file, the
# served workload has flags of its own).
RUN_FIELDS: tuple[str, ...] = tuple(
    name for name in Scenario.model_fields if name not in ("name", "description", "serve")
)
# The MoE-engine fields (expert balancing, overlap, all-to-all implementation, MTP).
ENGINE_FIELDS: tuple[str, ...] = ("eplb", "redundant_experts", "eplb_window", "rebalance_steps",
                                  "overlap", "a2a", "dispatch_dtype", "mtp", "mtp_acceptance")
# ServeSpec fields `moesim serve` takes as flags: all of them.
SERVE_FIELDS: tuple[str, ...] = tuple(ServeSpec.model_fields)
_ARRIVALS = ("rate", "concurrency", "requests_file")


def flag_name(field: str) -> str:
    """The flag of a Scenario field: `act_dtype` -> `--act-dtype`."""
    return "--" + field.replace("_", "-")


def _flag_type(annotation: Any) -> tuple[type, tuple[str, ...] | None]:
    """(argparse type, choices) of a field annotation; Optional and unions are looked through."""
    options = [annotation]
    if get_origin(annotation) in (Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
    for option in options:
        if get_origin(option) is Literal:
            return str, tuple(str(value) for value in get_args(option))
    if str in options:  # a name, or a mapping a scenario file may give instead
        return str, None
    for option in options:
        if get_origin(option) is list:
            return _number_list, None  # type: ignore[return-value]
        if option in (int, float):
            return option, None
        if get_origin(option) is dict:
            return _mapping, None  # type: ignore[return-value]
    return str, None


def _number_list(text: str) -> list[float]:
    """`0.9,0.8` -> [0.9, 0.8]."""
    try:
        return [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}; write numbers separated by "
                                         "commas, e.g. 0.9,0.8") from None


def _mapping(text: str) -> dict[str, str]:
    """`a=b,c=d` -> {"a": "b", "c": "d"}."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(pair) != 2 or not pair[0].strip() for pair in pairs):
        raise argparse.ArgumentTypeError(f"cannot read {text!r}; write NAME=VALUE,NAME=VALUE")
    return {key.strip(): value.strip() for key, value in pairs}


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel],
                    fields: Sequence[str]) -> None:
    """Add one flag per field of `model` in `fields` (type, choices, help from the field)."""
    for name in fields:
        info = model.model_fields[name]
        kind, choices = _flag_type(info.annotation)
        parser.add_argument(flag_name(name), dest=name, type=kind, choices=choices,
                            default=None, help=info.description)


def add_scenario_flags(parser: argparse.ArgumentParser, fields: Sequence[str]) -> None:
    """Add one flag per Scenario field in `fields`."""
    add_model_flags(parser, Scenario, fields)


def serve_spec_from_args(args: argparse.Namespace, base: ServeSpec | None) -> ServeSpec:
    """The scenario's served workload (or the defaults) with every given serve flag on top;
    an arrival flag replaces the scenario's arrival process."""
    given = {name: getattr(args, name) for name in SERVE_FIELDS
             if getattr(args, name, None) is not None}
    data = base.model_dump() if base is not None else {}
    if any(name in given for name in _ARRIVALS):
        data.update(dict.fromkeys(_ARRIVALS))
    try:
        return ServeSpec.model_validate({**data, **given})
    except ValidationError as exc:
        raise ConfigError(_flag_errors(exc, set(given), getattr(args, "scenario", None))) from None


def scenario_from_args(args: argparse.Namespace) -> Scenario:
    """The scenario file (`args.scenario`, or the defaults) with every given flag on top."""
    path = getattr(args, "scenario", None)
    base = load_scenario(path) if path else Scenario()
    given = {name: getattr(args, name) for name in Scenario.model_fields
             if getattr(args, name, None) is not None}
    try:
        return Scenario.model_validate({**base.model_dump(), **given})
    except ValidationError as exc:
        raise ConfigError(_flag_errors(exc, set(given), path)) from None


def _flag_errors(exc: ValidationError, given: set[str], path: str | None) -> str:
    """One message per refused value, naming the flag (or the scenario file's field)."""
    parts = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else ""
        if not field:  # a rule across fields
            parts.append(err["msg"].removeprefix("Value error, "))
            continue
        where = (flag_name(field) if field in given
                 else f"scenario file {path} field '{field}'" if path else f"field '{field}'")
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def scenario_with_serve(args: argparse.Namespace) -> Scenario:
    """The scenario file and flags, with the served workload from its serve flags when any is
    given (or the scenario has a `serve` block)."""
    scenario = scenario_from_args(args)
    if scenario.serve is None and not any(getattr(args, name, None) is not None
                                          for name in SERVE_FIELDS):
        return scenario
    return scenario.model_copy(update={"serve": serve_spec_from_args(args, scenario.serve)})
