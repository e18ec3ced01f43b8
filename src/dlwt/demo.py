"""Quick demo: train a small-stem ResNet-18 with each of the five rules on scikit-learn's bundled digits.

    dlwt demo                          # all five rules, 8 epochs each, CPU, about two minutes
    dlwt demo --rules bp,kp --epochs 2

Digits is real data (1,797 8x8 images, 10 classes) that ships with scikit-learn, so this runs anywhere
with no download. It proves every rule learns and shows how far each rule's B is from W; it is too easy
to rank the rules (that is what the ImageNet pipeline is for). Writes results/demo-rules.json.
"""
from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

import dlwt
from dlwt.engine import evaluate, sgd, train_one_epoch
from dlwt.provenance import write_json_atomic

# Digits moves W fast over a few hundred steps, so B must follow within tens of steps (see MIRROR_DEFAULTS).
DEMO_MIRROR = {"lr": 0.05, "weight_decay": 0.05, "batch_size": 8}


def digits_tensors(seed: int = 0):
    """(train, val) TensorDatasets of 3x8x8 float images, a fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8).div_(16.0).expand(-1, 3, -1, -1)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(y)
    tr, va = train_test_split(range(len(y)), test_size=0.2, random_state=seed, stratify=y.numpy())
    return TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va])


def run_rule(rule: str, epochs: int, seed: int = 0, batch_size: int = 64, lr: float = 0.05) -> dict:
    """Train one rule on digits; returns final metrics and alignment."""
    torch.manual_seed(seed)
    train_set, val_set = digits_tensors()
    train = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True)
    val = DataLoader(val_set, batch_size=256)
    model = dlwt.models.build("resnet18", num_classes=10, rule=rule, stem="small")
    opt = sgd(model, lr, 0.9, 5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.LinearLR(opt, 1.0, 0.0, total_iters=epochs * len(train))
    def after_step():
        dlwt.mirror_step(model, **DEMO_MIRROR)

    if rule == "wm":
        dlwt.mirror_step(model, steps=200, **DEMO_MIRROR)  # warm-up: align B before the first step
    device, start = torch.device("cpu"), time.perf_counter()
    for epoch in range(epochs):
        train_stats = train_one_epoch(model, train, opt, device, epoch=epoch, scheduler=sched,
                                      after_step=after_step if rule == "wm" else None)
    val_stats = evaluate(model, val, device)
    x, y = next(iter(val))
    angles = [a["angle_deg"] for a in dlwt.alignment(model).values()]
    grad_angles = list(dlwt.gradient_alignment(model.train(), x, y).values())
    return {"rule": rule, "epochs": epochs, "train_loss": train_stats["train_loss"],
            "val_top1_acc": 1 - val_stats["val_top1_err"], "mean_weight_angle_deg": statistics.mean(angles),
            "mean_grad_angle_deg": statistics.mean(grad_angles), "seconds": time.perf_counter() - start}


def main(args) -> int:
    rules = args.rules.split(",")
    unknown = [r for r in rules if r not in dlwt.RULES]
    if unknown:
        raise SystemExit(f"dlwt demo: unknown rule(s) {unknown}: choose from {','.join(dlwt.RULES)}")
    results = []
    print(f"digits (1,797 real 8x8 images), resnet18 small stem, {args.epochs} epochs per rule, CPU")
    print("| rule | val top-1 acc | mean angle(B, W) | mean angle(grad, bp grad) | seconds |")
    print("|---|---|---|---|---|")
    for rule in rules:
        r = run_rule(rule, args.epochs)
        results.append(r)
        print(f"| {rule} | {r['val_top1_acc']:.3f} | {r['mean_weight_angle_deg']:.1f} deg | "
              f"{r['mean_grad_angle_deg']:.1f} deg | {r['seconds']:.0f} |", flush=True)
    write_json_atomic(Path(args.out), {"dataset": "sklearn digits", "arch": "resnet18-small",
                                       "torch": torch.__version__, "results": results})
    print(f"wrote {args.out}")
    return 0


def add_subparser(sub) -> None:
    p = sub.add_parser("demo", help="train every rule on scikit-learn's digits (CPU, minutes)",
                       description=__doc__)
    p.add_argument("--rules", default=",".join(dlwt.RULES))
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--out", default="results/demo-rules.json")
    p.set_defaults(func=main)
