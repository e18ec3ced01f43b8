"""What a result was made with (saved beside it, airbench-style). Writers live in dlwt.atomic."""
from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("dlwt", "torch", "torchvision", "numpy", "ffcv")


def git_sha() -> str:
    """HEAD of the repository this package lives in, "+dirty" if it has changes; "unknown" outside git."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def provenance(params: dict, *, world_size: int, device: torch.device) -> dict:
    return {"params": params, "git_sha": git_sha(), "versions": versions(), "device": device_name(device),
            "world_size": world_size, "host": platform.node(),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
