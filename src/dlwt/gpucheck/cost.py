"""gpu-check parts 3 and 6, cost and cost-compile: each rule's training step where the pipeline runs it.

params.yaml's settings (ImageNet stem, data.res 224, data.batch_size 256 per GPU, bf16 autocast, channels_last,
fused SGD, wm with params.yaml's mirror section), timed by dlwt.rulecost: rules interleaved round by round,
warm-up excluded, CUDA events. Beside each measured ratio, the ratio the FLOP count predicts (FlopCounterMode),
so a rule that costs more than its arithmetic shows up. `cost-compile` times bp and the slowest rule of `cost`
again with train.compile: true (compilation is in the warm-up).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from dlwt import devices, rulecost
from dlwt.params import load

RULES = ("bp", "fa", "ss", "wm", "kp")
# fa, ss and kp add no arithmetic to a step and wm adds its mirror (1.7% of a ResNet step at 224 px, batch 256);
# a measured ratio this far above the FLOP ratio is a finding (the bench issue's expectation: fa/ss/kp within 3%)
OVER_FLOPS = 0.03


def _params(profile) -> dict:
    params = load("params.yaml")
    params["data"].update(res=profile.cost_res, batch_size=profile.cost_batch)
    params["model"]["stem"] = profile.cost_stem
    return params


def _device(profile):
    cuda = profile.device == "cuda"
    return devices.Device.resolve(profile.device, amp="bf16" if cuda else "none", channels_last=cuda)


def _slowest(out: Path, arch: str) -> str:
    try:
        rows = json.loads((out / "parts" / "cost.json").read_text())["data"][f"cost {arch}"]
        return max((r for r in rows if r["rule"] != "bp"), key=lambda r: r["vs_bp"])["rule"]
    except (OSError, ValueError, KeyError, TypeError):
        return "wm"  # the one rule with extra work per step


def run(rec, profile, *, name, deadline):
    params = _params(profile)
    dev = _device(profile)  # on CUDA, Device.resolve turns cudnn.benchmark on, as for training
    compiled = name == "cost-compile"
    rec.data["settings"] = {"res": profile.cost_res, "batch": profile.cost_batch, "stem": profile.cost_stem,
                            "device": str(dev.torch), "amp": str(dev.amp_dtype), "rounds": profile.cost_rounds,
                            "steps_per_round": profile.cost_steps, "mirror": params["mirror"],
                            "compile": compiled}
    for arch in profile.cost_archs:
        if time.time() > deadline - 20:
            rec.skip(f"cost {arch}", "the deadline was near")
            continue
        rules = ("bp", _slowest(rec.out, arch)) if compiled else RULES
        setups = {r: rulecost.Setup.build(params, arch, r, 1000, dev, compile=compiled,
                                          backend=profile.compile_backend) for r in rules}
        g = torch.Generator().manual_seed(0)
        x = torch.randn(profile.cost_batch, 3, profile.cost_res, profile.cost_res, generator=g)
        x = x.to(dev.torch, memory_format=dev.memory_format)
        y = torch.randint(0, 1000, (profile.cost_batch,), generator=g).to(dev.torch)
        raw = rulecost.interleaved(setups, x, y, dev, rounds=profile.cost_rounds, steps=profile.cost_steps,
                                   warmup=3 if dev.cuda else 1)
        del setups
        flops = {r: rulecost.flops_per_step(params, arch, r, 1000) for r in rules}
        rows = []
        for r in rules:
            row = {"arch": arch, **rulecost.summary_row(r, raw[r], profile.cost_batch), **flops[r]}
            row["flops_vs_bp"] = flops[r]["total_gflop"] / flops["bp"]["total_gflop"]
            rows.append(row)
        rec.data[f"cost {arch}"] = rows
        rec.flush()
        for row in rows:
            rec.check(f"{arch} {row['rule']} finite", row["finite"], "loss finite in every timed step")
            if dev.cuda and row["rule"] != "bp" and not compiled:
                rec.check(f"{arch} {row['rule']} vs FLOPs", row["vs_bp"] <= row["flops_vs_bp"] + OVER_FLOPS,
                          f"{row['vs_bp']:.3f}x bp measured, {row['flops_vs_bp']:.3f}x by FLOPs")
        if dev.cuda:
            torch.cuda.empty_cache()
    if not dev.cuda:
        rec.skip("ratio vs FLOPs", "CUDA only: the CPU profile's toy size says nothing about the pipeline's cost")
    return None
