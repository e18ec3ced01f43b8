"""`make gpu-check`: the first thing to run on a new GPU node, sized for 8 minutes on one GPU.

    make gpu-check                                   # bash scripts/gpu_check.sh --out results/gpu-check
    bash scripts/gpu_check.sh --out DIR              # the GPU profile (needs CUDA)
    bash scripts/gpu_check.sh --cpu --out DIR        # the tiny CPU profile: seconds per part (a test runs it)
    python -m dlwt.gpucheck part rules --profile cpu --out DIR   # one part by hand

It runs the parts below in order, most valuable first, each in its own process under its own time limit
(and a deadline for the whole), each writing its result the moment it has it: a JSON line in DIR/parts.jsonl
and DIR/parts/<name>.json. A part that fails records its traceback and the next part runs. At the end
DIR/summary.json ({"parts": [{"name", "status": "ok"|"fail"|"skipped", "seconds", ...}], ...}) and a readable
DIR/summary.md. Send summary.md with a bug report; BENCHMARKS.md's GPU rows come from its cost table.

    environment    GPU, driver, CUDA, torch, cuDNN, bf16, the check `train.device: cuda` runs (devices.py)
    rules          fa/ss/wm/kp on a converted torchvision ResNet-18: bf16 autocast + channels_last gradients
                   (W, kp's B, input) against an fp32 reference on the device and a float64 CPU one; mirror_step
                   with a device generator (equal seeds, equal B); kp's W - B shrinking by (1 - lr wd) per step
    cost           each rule's step as the pipeline runs it (ResNet-18/50, 224 px, batch 256, bf16,
                   channels_last, fused SGD, params.yaml's mirror settings), interleaved, CUDA events; FLOPs
    pipeline       dlwt acquire/extract/train/evaluate/report/doctor on Fashion-MNIST with the torchvision
                   loader on the device; one train stopped by SIGTERM mid-epoch and resumed, against a twin
    compile        torch.compile of each rule: graph breaks counted, gradients equal to eager
    cost-compile   the cost table with train.compile: true for bp and the slowest rule
    claims         until the deadline: all of Fashion-MNIST, every rule, 3 seeds, the report's verdicts

What it does not cover: FFCV loading on the GPU (the lent machine has no FFCV and no compiler to build it:
`dlwt doctor` checks the FFCV loader on a user's node where the .beton exists), DDP over several GPUs and NCCL
(one GPU), SLURM, and the Docker/Apptainer images (it runs from the checkout with PYTHONPATH=src).

What the image lacks (jsonschema for params validation) comes from a folder of wheels that `make gpu-carry`
prepares here (`pip download` for CPython 3.12 manylinux x86-64), installed there with `pip install
--no-index` into a throwaway folder; the Fashion-MNIST idx files travel in the same ignored folder.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# (name, module, time limit in s on the GPU profile, on the CPU profile). The GPU limits add up to more than
# the deadline on purpose: the later parts take what the earlier ones leave, the last one until the deadline.
PARTS = (
    ("environment", "env", 60, 60),
    ("rules", "numerics", 90, 120),
    ("cost", "cost", 150, 120),
    ("pipeline", "pipeline", 180, 300),
    ("compile", "compile", 120, 180),
    ("cost-compile", "cost", 120, 60),
    ("claims", "claims", 480, 240),
)
DEADLINE_S = {"gpu": 480, "cpu": 900}  # the whole check: 8 minutes of a 15-minute lease on a GPU


@dataclass(frozen=True)
class Profile:
    """Everything a part sizes itself by; "gpu" is the real check, "cpu" the same code at toy size."""

    name: str
    device: str
    numerics_arch: str = "resnet18"        # a torchvision ResNet-18 with its ImageNet stem
    numerics_stem: str = "imagenet"
    numerics_res: int = 112                # layer4 sees 4 x 4 x 16 values per channel: BatchNorm well posed
    numerics_batch: int = 16
    cost_archs: tuple = ("resnet18", "resnet50")
    cost_res: int = 224                    # params.yaml's data.res and data.batch_size: what the pipeline runs
    cost_batch: int = 256
    cost_stem: str = "imagenet"
    cost_rounds: int = 3
    cost_steps: int = 5
    compile_backend: str = "inductor"
    pipeline: dict = field(default_factory=dict)   # overlay over config/demo.yaml for the pipeline part
    claims: dict = field(default_factory=dict)     # overlay over config/demo.yaml for the claims part


PROFILES = {
    "gpu": Profile(
        "gpu", "cuda",
        pipeline={"data": {"fashion_mnist": {"train_per_class": 1000, "val_per_class": 200}, "batch_size": 256,
                           "num_workers": 4, "res": 28, "val_res": 28},
                  "model": {"archs": ["resnet18"], "seeds": [0]},
                  "train": {"device": "cuda", "amp": "bf16", "channels_last": True, "epochs": 2, "lr": 0.1,
                            "lr_batch": 256, "grad_batch": 256, "check_every": 10, "log_every": 10}},
        claims={"data": {"fashion_mnist": {"train_per_class": None, "val_per_class": None}, "batch_size": 256,
                         "num_workers": 2, "res": 28, "val_res": 28},
                "model": {"archs": ["resnet18"], "seeds": [0, 1, 2]},
                "train": {"device": "cuda", "amp": "bf16", "channels_last": True, "epochs": 4, "lr": 0.1,
                          "lr_batch": 256, "grad_batch": 256, "check_every": 20, "log_every": 50}}),
    "cpu": Profile(
        "cpu", "cpu", numerics_arch="resnet8", numerics_stem="small", numerics_res=16, numerics_batch=4,
        cost_archs=("resnet8",), cost_res=16, cost_batch=4,
        cost_stem="small", cost_rounds=2, cost_steps=1, compile_backend="aot_eager",
        pipeline={"data": {"fashion_mnist": {"train_per_class": 12, "val_per_class": 4}, "batch_size": 8,
                           "num_workers": 1, "res": 16, "val_res": 16},
                  "model": {"archs": ["resnet8"], "rules": ["bp", "wm"], "seeds": [0]},
                  "train": {"device": "cpu", "epochs": 1, "lr_batch": 8, "grad_batch": 8, "warmup_epochs": 0,
                            "check_every": 1, "log_every": 1},
                  "mirror": {"warmup_steps": 2}},
        claims={"data": {"fashion_mnist": {"train_per_class": 8, "val_per_class": 4}, "batch_size": 8,
                         "num_workers": 1, "res": 12, "val_res": 12},
                "model": {"archs": ["resnet8"], "rules": ["bp", "fa"], "seeds": [0]},  # the jobs' path, not a verdict
                "train": {"device": "cpu", "epochs": 1, "lr_batch": 8, "grad_batch": 8, "warmup_epochs": 0},
                "mirror": {"warmup_steps": 2}}),
}
