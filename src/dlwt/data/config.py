"""The data stage's settings: the `data:` section of params, with the defaults, types and reasons declared once
in src/dlwt/params_schema.yaml (DATA_DEFAULTS is read from there, never written here).

    python -c "from dlwt.data.config import DATA_DEFAULTS; import pprint; pprint.pprint(DATA_DEFAULTS)"
"""

import copy

from dlwt.params import choices, defaults

DATA_DEFAULTS = defaults("data")

MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # ImageNet statistics on 0..255 pixels (ffcv-imagenet)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

_ENUMS = ("source", "backend", "on_corrupt", "write_mode")


def resolve(cfg=None):
    """DATA_DEFAULTS deep-merged with cfg (a plain dict, e.g. params['data']), with raw_dir and val_res made
    explicit; unknown keys and values outside the schema's choices are DataErrors."""
    from dlwt.data import DataError

    out = copy.deepcopy(DATA_DEFAULTS)
    for key, value in (cfg or {}).items():
        if key not in out:
            raise DataError(f"data config: unknown key {key!r}; expected one of {sorted(out)}")
        if isinstance(out[key], dict) and isinstance(value, dict) and key != "urls":
            unknown = set(value) - set(out[key])
            if unknown:
                raise DataError(
                    f"data config: unknown key(s) {sorted(unknown)} in {key!r}; expected {sorted(out[key])}"
                )
            out[key].update(value)
        else:
            out[key] = value
    if out["raw_dir"] is None:
        out["raw_dir"] = f"{out['root']}/raw/{out['dataset']}"
    if out["val_res"] is None:
        out["val_res"] = out["res"]
    for key in _ENUMS:
        allowed = choices(f"data.{key}")
        if out[key] not in allowed:
            raise DataError(f"data config: {key}={out[key]!r}; expected one of {allowed}")
    return out
