"""Load params.yaml, deep-merge overlays over it, validate against params_schema.yaml.

    dlwt params --params params.yaml --overlay config/demo.yaml     # prints the merged, validated params
"""
from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from dlwt.errors import DlwtError


class ParamsError(DlwtError, ValueError):
    """params.yaml or an overlay is missing, malformed, or breaks the schema."""


def schema() -> dict:
    return yaml.safe_load(resources.files("dlwt").joinpath("params_schema.yaml").read_text())


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`: dicts recursively, everything else (lists too) replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: no such params file (run from the repository root, or pass --params)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def validate(params: dict, source: str = "params") -> dict:
    """Raise ParamsError naming the first offending key; return params unchanged."""
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema()).iter_errors(params))
    if error is None:
        return params
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        raise ParamsError(f"{source}: unknown key {where + '.' if error.absolute_path else ''}{extra[0]} "
                          f"(allowed here: {allowed})")
    raise ParamsError(f"{source}: {where}: {error.message}")


def load(path="params.yaml", overlays=()) -> dict:
    """params.yaml with each overlay deep-merged over it in order, validated."""
    params = _read(path)
    for overlay in overlays:
        params = deep_merge(params, _read(overlay))
    names = " + ".join(str(p) for p in (path, *overlays))
    return validate(params, names)


def add_subparser(sub) -> None:
    p = sub.add_parser("params", help="print the merged, validated params (YAML) that every stage reads")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--overlay", action="append", default=[], help="YAML deep-merged over --params (repeatable)")
    p.set_defaults(func=lambda a: print(yaml.safe_dump(load(a.params, a.overlay), sort_keys=False), end="") or 0)
