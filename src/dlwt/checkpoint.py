"""Checkpoints load as data, never as code: every .pt a user can hand to dlwt goes through here.

    from dlwt import checkpoint
    ckpt = checkpoint.load(run.last, expect={"arch": "resnet18", "rule": "wm", "seed": 0},
                           fix="delete it to start the run afresh")
    state, meta = checkpoint.load_weights("resnet18.pth")     # a dlwt checkpoint or a plain state dict

`torch.load(weights_only=True)` unpickles only tensors and plain containers (dict, list, tuple, str,
numbers), which is all a dlwt checkpoint holds: model/optimiser/scheduler state dicts, RNG ByteTensors,
metrics and params. A file that names any other Python object (the way a crafted pickle runs code) is
refused before that object is built. Everything is mapped to the CPU first (a CUDA map would put the RNG
ByteTensors on the GPU, where torch.set_rng_state refuses them). Every failure is one DlwtError naming the
file and the fix.
"""
from __future__ import annotations

import hashlib
import pickle
import re
import warnings
import zipfile
from pathlib import Path

from dlwt.errors import DlwtError

KEYS = ("arch", "rule", "seed", "epoch", "model")  # what every dlwt checkpoint holds (train.py writes more)
DEFAULT_FIX = "pass a checkpoint written by `dlwt train` (<run>/checkpoints/final.pt)"


def read(path, *, fix: str = DEFAULT_FIX):
    """Whatever the file holds, loaded with weights_only=True onto the CPU; DlwtError if it is missing,
    empty, truncated, not a torch file, or names Python objects other than plain data."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise DlwtError(f"{path}: no such checkpoint file; {fix}")
    if path.stat().st_size == 0:
        raise DlwtError(f"{path}: empty file (0 bytes, a write that never finished?); {fix}")
    try:
        with warnings.catch_warnings():  # "Detected pickle protocol 4": noise on a file we refuse anyway
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # weights_only refused a global (a class or function the file wants built): foreign or malicious,
        # but only if the file is a torch zip or parses as a whole pickle. Random bytes whose first byte is
        # GLOBAL's opcode ('c') also make weights_only name a "global" (~1 file in 256): not a checkpoint.
        what = re.search(r"GLOBAL ([\w.]+)", str(e))
        if not ((what and zipfile.is_zipfile(path)) or _pickle_names_objects(path)):
            raise DlwtError(f"{path}: not a checkpoint (neither a torch file nor a pickle of tensors); "
                            f"{fix}") from None
        raise DlwtError(f"{path}: refused to load: it names Python objects other than tensors and plain "
                        f"data{f' ({what[1]})' if what else ''}, which could run code; {fix}") from None
    except Exception as e:  # noqa: BLE001  (a foreign file fails in many ways; weights_only ran no code)
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
        first = first if isinstance(e, RuntimeError) else f"{type(e).__name__} {first}".strip()
        raise DlwtError(f"{path}: not a readable torch file (truncated or another format: {first[:120]}); "
                        f"{fix}") from None


def _pickle_names_objects(path) -> bool:
    """Whether the file is one whole plain (non-zip) pickle that asks for a class or function to be built.
    pickletools only parses the opcodes, it builds nothing. Random bytes fail to parse, stop short of STOP
    or name a "module" that is no Python name: "not a checkpoint"."""
    import pickletools

    try:
        with open(path, "rb") as f:
            ops = [(op.name, arg) for op, arg, _ in pickletools.genops(f)]
    except Exception:  # noqa: BLE001  (not a pickle: whatever parsing error it raises)
        return False
    if not ops or ops[-1][0] != "STOP":
        return False
    named = [str(arg).replace(" ", ".").split(".") for name, arg in ops if name in ("GLOBAL", "INST")]
    if not all(part.isidentifier() for parts in named for part in parts):
        return False
    return any(name in ("GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE") for name, _ in ops)


def check_sha256(path, prefix: str, *, fix: str) -> None:
    """DlwtError unless the SHA-256 of `path` starts with `prefix` (a published hash or its first hex digits,
    e.g. the 8 in torchvision's resnet18-f37072fd.pth): a cache someone replaced is refused unread."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if not digest.hexdigest().startswith(prefix.lower()):
        raise DlwtError(f"{path}: SHA-256 {digest.hexdigest()[:16]}... is not the published {prefix}: the file "
                        f"is damaged or was replaced, and is not loaded; {fix}")


def load(path, *, expect: dict | None = None, fix: str = DEFAULT_FIX) -> dict:
    """A dlwt checkpoint (a dict with arch, rule, seed, epoch, model, ...) as data on the CPU.

    expect: e.g. {"arch": "resnet18", "rule": "wm", "seed": 0}; any key that differs is a DlwtError that
    names what the file holds.
    """
    ckpt = read(path, fix=fix)
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in KEYS):
        raise DlwtError(f"{path}: not a dlwt checkpoint (no {'/'.join(KEYS)} entries); {fix}")
    wrong = {k: v for k, v in (expect or {}).items() if ckpt.get(k) != v}
    if wrong:
        held = ", ".join(f"{k}={ckpt.get(k)!r}" for k in wrong)
        wanted = ", ".join(f"{k}={v!r}" for k, v in wrong.items())
        raise DlwtError(f"{path}: holds {held}, not {wanted}; pass the matching checkpoint (or settings)")
    return ckpt


def _is_state_dict(obj) -> bool:
    import torch

    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def load_weights(path, *, fix: str = DEFAULT_FIX, sha256: str | None = None) -> tuple[dict, dict]:
    """(state dict, meta) from a dlwt checkpoint (meta: its arch/rule/seed/epoch and stem) or from a plain state dict
    such as torchvision's pretrained files or `torch.save(model.state_dict(), ...)` (meta: {}). sha256: the
    published hash (or its prefix) the file must have, checked before anything is unpickled."""
    if sha256 is not None and Path(path).is_file():
        check_sha256(path, sha256, fix=fix)
    obj = read(path, fix=fix)
    if isinstance(obj, dict) and all(k in obj for k in KEYS) and _is_state_dict(obj["model"]):
        meta = {k: obj[k] for k in ("arch", "rule", "seed", "epoch")}
        stem = obj.get("stem") or ((obj.get("params") or {}).get("model") or {}).get("stem")  # new, old layout
        return obj["model"], {**meta, **({"stem": stem} if stem else {})}
    for key in ("state_dict", "model"):  # common wrappers ({"state_dict": ...} from other trainers)
        if isinstance(obj, dict) and _is_state_dict(obj.get(key)):
            return obj[key], {}
    if _is_state_dict(obj):
        return obj, {}
    raise DlwtError(f"{path}: neither a dlwt checkpoint nor a state dict (a mapping of names to tensors); {fix}")
