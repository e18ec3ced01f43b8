"""What one training step of each rule costs, measured as `dlwt train` runs it, and counted in FLOPs.

    from dlwt import rulecost
    setups = {r: rulecost.Setup.build(params, "resnet18", r, num_classes, dev) for r in ("bp", "wm")}
    rows = rulecost.interleaved(setups, x, y, dev, rounds=3, steps=5)   # {rule: {"ms": [...], "vs_bp": [...]}}
    rulecost.flops_per_step(params, "resnet50", "wm", 1000)            # {"train": ..., "mirror": ..., ...}

A step is what the training loop does: forward and loss under the Device's autocast, backward, the fused SGD
step of engine.sgd, and for wm the mirror steps of params' `mirror` section (mirror.steps every mirror.every
steps, its noise batch and map size). Rules are interleaved round by round so that machine noise hits them
alike, warm-up steps (cuDNN's kernel search, allocator growth, compilation) are excluded, and the ratio to bp
is taken within each round. On a GPU the time is the device's (CUDA events around the round, one sync at its
end); on the CPU it is perf_counter. Used by `dlwt doctor`, `make gpu-check` and bench/rules.py, so the three
measure the same step.
"""
from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import dlwt
from dlwt.mirror import after_step

MIRROR_KEYS = ("noise_std", "lr", "weight_decay", "batch_size", "size")


def mirror_kwargs(mirror_cfg: dict) -> dict:
    """mirror_step's keyword arguments from params' mirror section."""
    return {k: mirror_cfg[k] for k in MIRROR_KEYS}


@dataclass
class Setup:
    """One rule's model, optimiser and step as the training loop builds them."""

    rule: str
    model: torch.nn.Module
    step_model: torch.nn.Module     # torch.compile(model) when train.compile, else model
    opt: torch.optim.Optimizer
    after: Callable[[], None] | None  # dlwt.rules.after_step: what the rule does after each optimiser step
    label_smoothing: float
    done: int = 0

    @staticmethod
    def build(params: dict, arch: str, rule: str, num_classes: int, dev, *, compile: bool | None = None,
              backend: str = "inductor") -> Setup:
        from dlwt.engine import sgd

        t = params["train"]
        torch.manual_seed(0)
        model = dlwt.models.build(arch, num_classes, rule, params["model"]["stem"])
        model = model.to(dev.torch, memory_format=dev.memory_format)
        opt = sgd(model, 0.01, t["momentum"], t["weight_decay"], t["nesterov"])
        use_compile = t["compile"] if compile is None else compile
        return Setup(rule, model, torch.compile(model, backend=backend) if use_compile else model, opt,
                     after_step(model, rule, every=params["mirror"]["every"],
                                steps=params["mirror"]["steps"], **mirror_kwargs(params["mirror"])),
                     t["label_smoothing"])

    def step(self, x, y, dev) -> torch.Tensor:
        with dev.autocast():
            loss = F.cross_entropy(self.step_model(x), y, label_smoothing=self.label_smoothing)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.done += 1
        if self.after is not None:
            self.after()
        return loss.detach()


def _timed(setup: Setup, x, y, dev, steps: int) -> tuple[float, torch.Tensor]:
    """ms per step over `steps` steps (device time on CUDA), and the last loss."""
    if dev.cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            loss = setup.step(x, y, dev)
        end.record()
        end.synchronize()  # the one host sync of a round
        return start.elapsed_time(end) / steps, loss
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = setup.step(x, y, dev)
    return 1000 * (time.perf_counter() - t0) / steps, loss


def interleaved(setups: dict[str, Setup], x, y, dev, *, rounds: int = 3, steps: int = 5, warmup: int = 2) -> dict:
    """Time every setup round by round; {rule: {"ms": [per round], "vs_bp": [per round] or None, "peak_mb",
    "finite"}}. Peak memory is the device's allocator peak over the rule's rounds (CPU: growth of the
    process's max RSS, a rough upper bound)."""
    out = {r: {"ms": [], "vs_bp": [] if "bp" in setups else None, "peak_mb": 0.0, "finite": True} for r in setups}
    for s in setups.values():
        for _ in range(warmup):
            s.step(x, y, dev)
    for _ in range(rounds):
        times = {}
        for rule, s in setups.items():
            if dev.cuda:
                torch.cuda.reset_peak_memory_stats(dev.torch)
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            times[rule], loss = _timed(s, x, y, dev, steps)
            peak = (torch.cuda.max_memory_allocated(dev.torch) / 2**20 if dev.cuda else
                    max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024)
            row = out[rule]
            row["ms"].append(times[rule])
            row["peak_mb"] = max(row["peak_mb"], peak)
            row["finite"] = row["finite"] and bool(torch.isfinite(loss).item())
        for rule in setups:
            if "bp" in setups:
                out[rule]["vs_bp"].append(times[rule] / times["bp"])
    return out


def summary_row(rule: str, row: dict, batch: int) -> dict:
    """One table row: mean ms per step, the mean +- sd of the per-round ratios to bp, images/s."""
    ms = statistics.mean(row["ms"])
    ratios = row["vs_bp"]
    return {"rule": rule, "ms_per_step": ms, "images_per_s": batch / ms * 1000,
            "vs_bp": statistics.mean(ratios) if ratios else None,
            "vs_bp_sd": statistics.stdev(ratios) if ratios and len(ratios) > 1 else 0.0,
            "peak_mb": row["peak_mb"], "finite": row["finite"], "rounds": len(row["ms"])}


def flops_per_step(params: dict, arch: str, rule: str, num_classes: int, *, res: int | None = None,
                   batch: int | None = None) -> dict:
    """FLOPs of one training step (forward + backward, counted by torch's FlopCounterMode on the meta device:
    shapes only, no memory) at params' resolution and batch, and of wm's mirror work per training step
    (mirror.steps / mirror.every mirror steps). Convolutions and matmuls only, as FlopCounterMode counts."""
    from torch.utils.flop_counter import FlopCounterMode

    d, m = params["data"], params["mirror"]
    res, batch = res or d["res"], batch or d["batch_size"]
    meta = torch.device("meta")
    model = dlwt.models.build(arch, num_classes, rule, params["model"]["stem"]).to(meta)
    x = torch.empty(batch, 3, res, res, device=meta)
    y = torch.zeros(batch, dtype=torch.long, device=meta)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    train = counter.get_total_flops()
    mirror = 0
    if rule == "wm":
        with FlopCounterMode(display=False) as counter:
            dlwt.mirror_step(model, steps=1, **mirror_kwargs(m))
        mirror = counter.get_total_flops() * m["steps"] / m["every"]
    return {"arch": arch, "rule": rule, "res": res, "batch": batch, "train_gflop": train / 1e9,
            "mirror_gflop": mirror / 1e9, "total_gflop": (train + mirror) / 1e9}
