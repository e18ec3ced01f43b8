"""Load params.yaml, deep-merge overlays over it, fill what they leave out with the schema's defaults, validate.
params_schema.yaml declares every setting once (type, default, why); `defaults()` is the one place code reads
a default from.

    dlwt params --params params.yaml --overlay config/demo.yaml     # prints the merged, validated params
"""
from __future__ import annotations

import copy
import functools
import re
from importlib import resources
from pathlib import Path

import jsonschema
import yaml

from dlwt.errors import DlwtError


class ParamsError(DlwtError, ValueError):
    """params.yaml or an overlay is missing, malformed, or breaks the schema."""


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return yaml.safe_load(resources.files("dlwt").joinpath("params_schema.yaml").read_text())


def schema() -> dict:
    return copy.deepcopy(_schema())


def _fill(node: dict, value):
    """value with every key the schema node gives a default filled in (value itself when it is not a dict)."""
    props = node.get("properties")
    if not props or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, sub in props.items():
        if key in out:
            out[key] = _fill(sub, out[key])
        elif "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        elif sub.get("properties") and not sub.get("required"):  # a section whose keys all have defaults
            out[key] = _fill(sub, {})
    return out


def complete(params: dict) -> dict:
    """params with every key it leaves out set to the schema's default (a copy)."""
    return _fill(_schema(), copy.deepcopy(params))


def defaults(section: str) -> dict:
    """The schema's defaults of one section, e.g. defaults("data"): what the library uses without params."""
    return _fill(_schema()["properties"][section], {})


def choices(dotted: str) -> list:
    """The allowed values of an enum setting, e.g. choices("data.source") (for CLI flags)."""
    node = _schema()
    for part in dotted.split("."):
        node = node["properties"][part]
    return list(node["enum"])


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`: dicts recursively, everything else (lists too) replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read(path, flag="--params") -> dict:
    path = Path(path)
    if not path.is_file():
        where = "run from the repository root, or pass --params" if flag == "--params" else \
            "check the --overlay (Snakemake: --configfile) path"
        raise ParamsError(f"{path}: no such {'params' if flag == '--params' else 'overlay'} file ({where})")
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
    hint = ""
    if isinstance(error.instance, str) and re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", error.instance):
        # YAML 1.1 (PyYAML) reads 5e-5 as a string: a float needs a dot in its mantissa
        hint = f" (YAML reads {error.instance} as text: write it as {_yaml_float(error.instance)})"
    raise ParamsError(f"{source}: {where}: {error.message}{hint}")


def _yaml_float(text: str) -> str:
    mantissa, exponent = re.split("[eE]", text)
    return f"{mantissa if '.' in mantissa else mantissa + '.0'}e{exponent}"


def read_merged(path="params.yaml", overlays=()) -> dict:
    """params.yaml with each overlay deep-merged over it in order, as written (no defaults, not validated)."""
    params = _read(path)
    for overlay in overlays:
        params = deep_merge(params, _read(overlay, "--overlay"))
    return params


def load(path="params.yaml", overlays=()) -> dict:
    """params.yaml with each overlay deep-merged over it in order, defaults filled in, validated."""
    params = read_merged(path, overlays)
    names = " + ".join(str(p) for p in (path, *overlays))
    return validate(complete(params), names)


def add_arguments(p) -> None:
    """--params and --overlay: how every `dlwt` subcommand is told its params."""
    p.add_argument("--params", default="params.yaml", help="the experiment's params file")
    p.add_argument("--overlay", action="append", default=[], help="YAML deep-merged over --params (repeatable)")


def add_subparser(sub) -> None:
    p = sub.add_parser("params", help="print the merged, validated params (YAML) that every stage reads")
    add_arguments(p)
    p.set_defaults(func=lambda a: print(yaml.safe_dump(load(a.params, a.overlay), sort_keys=False), end="") or 0)
