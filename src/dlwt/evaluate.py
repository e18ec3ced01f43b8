"""Evaluate one checkpoint: top-1/top-5 error on the whole validation set, alignment, speed.

    dlwt evaluate --params params.yaml --arch resnet18 --rule wm --seed 0 \
        --checkpoint results/imagenet/runs/resnet18-wm-s0/checkpoints/final.pt --out results/imagenet/eval/resnet18-wm-s0.json

Validation uses the centre crop. Gradient alignment (the angle between each layer's rule update and the
true backprop gradient) is measured in eval mode on one fixed validation batch: the first `train.grad_batch`
images in the validation order, the same for every rule.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

import dlwt
from dlwt.engine import evaluate
from dlwt.provenance import provenance, write_json_atomic


def fixed_batch(loader, n: int):
    """The first n images (and labels) of a sequential loader."""
    xs, ys, have = [], [], 0
    for x, y in loader:
        xs.append(x)
        ys.append(y)
        have += y.shape[0]
        if have >= n:
            break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


def evaluate_checkpoint(params: dict, arch: str, rule: str, seed: int, checkpoint: Path, out: Path) -> dict:
    from dlwt.data.loaders import make_loader

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise SystemExit(f"dlwt evaluate: no checkpoint at {checkpoint}: run `dlwt train` for "
                         f"{arch}-{rule}-s{seed} first")
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    got = (ckpt.get("arch"), ckpt.get("rule"), ckpt.get("seed"))
    if got != (arch, rule, seed):
        raise SystemExit(f"dlwt evaluate: {checkpoint} holds {got[0]}-{got[1]}-s{got[2]}, not "
                         f"{arch}-{rule}-s{seed}: pass the matching --arch/--rule/--seed or checkpoint")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    val_loader = make_loader("val", params["data"], device)
    model = dlwt.models.build(arch, val_loader.num_classes, rule, params["model"]["stem"])
    model.load_state_dict(ckpt["model"])
    model = model.to(device)
    amp_dtype = torch.bfloat16 if device.type == "cuda" and params["train"]["amp"] == "bf16" else None
    stats = evaluate(model, val_loader, device, amp_dtype=amp_dtype)
    x, y = fixed_batch(val_loader, params["train"]["grad_batch"])
    model.eval()  # BatchNorm running statistics, so the measurement does not depend on the batch size
    result = {"arch": arch, "rule": rule, "seed": seed, "epoch": ckpt["epoch"], "checkpoint": str(checkpoint),
              **stats, "images_per_s": stats["val_images"] / stats["val_seconds"],
              "params": sum(p.numel() for n, p in model.named_parameters() if not n.endswith("feedback")),
              "alignment": dlwt.alignment(model),
              "gradient_alignment": dlwt.gradient_alignment(model, x, y, F.cross_entropy),
              "provenance": provenance(params, world_size=1, device=device)}
    write_json_atomic(out, result)
    print(f"{arch}-{rule}-s{seed}: val top-1 err {result['val_top1_err']:.4f}, top-5 err "
          f"{result['val_top5_err']:.4f} on {result['val_images']} images -> {out}")
    return result


def main(args) -> int:
    from dlwt.params import load
    params = load(args.params, args.overlay)
    evaluate_checkpoint(params, args.arch, args.rule, args.seed, Path(args.checkpoint), Path(args.out))
    return 0


def add_subparser(sub) -> None:
    from dlwt.train import add_run_arguments
    p = sub.add_parser("evaluate", help="checkpoint -> eval JSON (top-1/top-5 error, alignment)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True, help="e.g. results/<exp>/eval/<arch>-<rule>-s<seed>.json")
    p.set_defaults(func=main)
