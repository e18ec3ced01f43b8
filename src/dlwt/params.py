"""Load params.yaml, deep-merge overlays over it, fill what they leave out with the schema's defaults, validate.
params_schema.yaml declares every setting once (type, default, why); `defaults()` is the one place code reads
a default from.

    dlwt params --params params.yaml --overlay config/demo.yaml     # prints the merged, validated params
"""
from __future__ import annotations

import copy
import functools
import math
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


MAX_DEPTH = 32  # params nest 4 deep; 20,000 nested `[` made the YAML composer (recursive) raise RecursionError
SEED_RANGE = (0, 2**32 - 1)  # what numpy, scikit-learn and torch all take as a seed


class _Refused(yaml.YAMLError):
    """YAML that is valid but not taken as params (an alias, deep nesting): str is the reason."""


class _ParamsLoader(yaml.SafeLoader):
    """safe_load without aliases and with a nesting cap, checked as the document is composed, before anything
    is built: 9 anchors of 9 aliases each expand to 9^9 values (190 s and 2.7 GB in jsonschema, then a
    MemoryError traceback). Anchors alone are harmless; a params file never needs an alias."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused(f"line {event.start_mark.line + 1}: YAML alias *{event.anchor} refused (aliases can "
                           "expand a small file to gigabytes): write the value out instead")
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"line {self.peek_event().start_mark.line + 1}: nested more than {MAX_DEPTH} levels "
                           "deep: params are sections of settings, not deep structures")
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def check_seed(seed: int, flag: str = "--seed") -> int:
    """seed, if numpy, scikit-learn and torch all take it; else ParamsError naming the flag."""
    if not SEED_RANGE[0] <= seed <= SEED_RANGE[1]:
        raise ParamsError(f"{flag} {seed}: outside {SEED_RANGE[0]}..{SEED_RANGE[1]} (what numpy, scikit-learn and "
                          "torch all take): choose a seed in that range")
    return seed


def _read(path, flag="--params") -> dict:
    path = Path(path)
    what = "params" if flag == "--params" else "overlay"
    if path.is_dir():
        article = "a params" if flag == "--params" else "an overlay"
        raise ParamsError(f"{path}: is a folder, not {article} file: pass a YAML file ({flag})")
    if not path.is_file():
        where = "run from the repository root, or pass --params" if flag == "--params" else \
            "check the --overlay (Snakemake: --configfile) path"
        raise ParamsError(f"{path}: no such {what} file ({where})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ParamsError(f"{path}: not a text file (byte {e.start} is not UTF-8): pass the YAML {what} file "
                          f"({flag})") from None
    try:
        data = yaml.load(text, Loader=_ParamsLoader) or {}
    except _Refused as e:
        raise ParamsError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections at the top level")
    return data


def _check_values(node, source: str, where: str = "") -> None:
    """What YAML can say but no setting takes, refused before the schema sees it (jsonschema would let NaN
    through every bound, sort mixed keys with a TypeError, and torch would overflow on a 70-bit seed):
    keys that are not text, NaN/inf, integers beyond 64 bits, seeds outside SEED_RANGE."""
    label = where or "(top level)"
    if isinstance(node, dict):
        for key, value in node.items():
            if not isinstance(key, str):
                raise ParamsError(f"{source}: {label}: key {key!r} is {type(key).__name__}, not text: every key is "
                                  f"a setting's name (quote it, \"{key}\", if that was meant)")
            _check_values(value, source, f"{where}.{key}" if where else key)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_values(value, source, f"{where}[{i}]")
    elif isinstance(node, float) and not math.isfinite(node):
        raise ParamsError(f"{source}: {label}: {node} is not a value any setting takes: write a finite number")
    elif isinstance(node, int) and not isinstance(node, bool):
        name = re.sub(r"\[\d+\]$", "", where).rsplit(".", 1)[-1]
        if name in ("seed", "seeds") and not SEED_RANGE[0] <= node <= SEED_RANGE[1]:
            raise ParamsError(f"{source}: {label}: seed {node} is outside {SEED_RANGE[0]}..{SEED_RANGE[1]} (what "
                              "numpy, scikit-learn and torch all take): choose a seed in that range")
        if not -2**63 <= node < 2**63:
            raise ParamsError(f"{source}: {label}: {node} does not fit in 64 bits: write a smaller number")


def validate(params: dict, source: str = "params") -> dict:
    """Raise ParamsError naming the first offending key; return params unchanged."""
    _check_values(params, source)
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema()).iter_errors(params))
    if error is None:
        return params
    where = ".".join(str(p) for p in error.absolute_path) or "(top level)"
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        raise ParamsError(f"{source}: unknown key {where + '.' if error.absolute_path else ''}{extra[0]} "
                          f"(allowed here: {allowed})")
    if error.validator == "maxLength":  # the message would repeat the whole value
        raise ParamsError(f"{source}: {where}: {len(error.instance)} characters, at most {error.validator_value} "
                          "(it names files and folders): choose a shorter name")
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
