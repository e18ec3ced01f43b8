"""gpu-check part 1, environment: what this node is, and the check a `train.device: cuda` job runs first."""
from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess

import torch

from dlwt import devices
from dlwt.provenance import versions

# what the pipeline imports beyond torch; the lent GPU machine lacks the last four (gpu_check.sh installs
# jsonschema from carried wheels; the others are the cluster's business and are reported, not required)
OPTIONAL = ("ffcv", "snakemake", "dvc", "dvclive")
REQUIRED = ("torchvision", "numpy", "yaml", "jsonschema", "PIL", "pandas", "seaborn", "scipy", "sklearn", "tqdm")


def _nvidia_smi() -> str | None:
    if not shutil.which("nvidia-smi"):
        return None
    q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                        "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
    return q.stdout.strip() or q.stderr.strip() or None


def run(rec, profile, *, name, deadline):
    env = {**versions(), "torch_cuda": torch.version.cuda, "cpus_allowed": devices.cpus(),
           "cpus_node": os.cpu_count(), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    env.update({f"have_{m}": importlib.util.find_spec(m) is not None for m in OPTIONAL})
    rec.data["environment"] = env
    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    rec.check("packages", not missing, f"missing: {', '.join(missing)}" if missing else
              f"{', '.join(REQUIRED)} import; optional: " + ", ".join(f"{m} {'yes' if env[f'have_{m}'] else 'no'}"
                                                                    for m in OPTIONAL))
    if profile.device != "cuda":
        dev = devices.Device.resolve("cpu")
        rec.check("device", dev.torch.type == "cpu", str(dev.torch))
        for what in ("nvidia-smi", "cuda-device", "bf16", "cudnn"):
            rec.skip(what, "CUDA only (CPU profile)")
        return None
    env["nvidia_smi"] = _nvidia_smi()
    try:
        dev = devices.Device.resolve("cuda", amp="bf16", channels_last=True)
    except Exception as e:  # noqa: BLE001 (the one-line DlwtError a cuda job would stop with)
        rec.check("cuda-device", False, str(e))
        return None
    env.update({"gpu": torch.cuda.get_device_name(dev.torch), "capability": ".".join(
        map(str, torch.cuda.get_device_capability(dev.torch))), "gpus_visible": torch.cuda.device_count(),
        "cudnn": torch.backends.cudnn.version(), "bf16": torch.cuda.is_bf16_supported(),
        "memory_gb": round(torch.cuda.get_device_properties(dev.torch).total_memory / 2**30, 1)})
    rec.check("cuda-device", True, f"{dev.torch} ({env['gpu']}), {devices.cuda_report()}")
    rec.check("nvidia-smi", env["nvidia_smi"] is not None, env["nvidia_smi"] or "nvidia-smi not found")
    rec.check("bf16", env["bf16"], "torch.cuda.is_bf16_supported()")
    rec.check("cudnn", env["cudnn"] is not None and torch.backends.cudnn.is_available(), f"cuDNN {env['cudnn']}")
    x = torch.randn(64, 3, 32, 32, device=dev.torch).contiguous(memory_format=torch.channels_last)
    conv = torch.nn.Conv2d(3, 8, 3).to(dev.torch, memory_format=torch.channels_last)
    with dev.autocast():
        y = conv(x)
    rec.check("bf16-conv", y.dtype == torch.bfloat16 and bool(torch.isfinite(y).all()),
              f"a channels_last conv under the Device's autocast gives {y.dtype}")
    return None
