"""Evaluate any weights: top-1/top-5 error on the whole validation set, alignment, speed.

    dlwt evaluate --params params.yaml --arch resnet18 --rule wm --seed 0 \
        --checkpoint results/imagenet/runs/resnet18-wm-s0/checkpoints/final.pt --out results/imagenet/eval/resnet18-wm-s0.json
    dlwt evaluate --params params.yaml --arch resnet50 --rule bp --weights torchvision --out tv-resnet50.json
    dlwt evaluate --params params.yaml --arch resnet18 --rule bp --checkpoint my_state_dict.pt --out mine.json

--checkpoint takes a dlwt checkpoint (its arch/rule/seed must match the flags) or a plain state dict of the
same torchvision ResNet (`torch.save(model.state_dict(), f)`); both load as data (dlwt.checkpoint), never
as code. --weights torchvision evaluates torchvision's pretrained ImageNet weights, the backprop reference
(published top-1: ResNet-18 69.758 %, ResNet-50 76.130 %); they are downloaded once into $TORCH_HOME (where
there is internet), checked against the SHA-256 prefix torchvision publishes in the file name, read as data,
and need a 1000-class ImageNet val set with the imagenet stem. A state dict without
feedback matrices loads into any rule's model: B keeps its random start (the forward pass does not use it).

Validation uses the centre crop. Gradient alignment (the angle between each layer's rule update and the
true backprop gradient) is measured in eval mode on one fixed validation batch: the first `train.grad_batch`
images in the validation order, the same for every rule.
"""
from __future__ import annotations

import argparse
import os
import urllib.parse
from pathlib import Path

import torch.nn.functional as F

import dlwt
from dlwt import checkpoint as ckpt_io
from dlwt.atomic import write_json_atomic
from dlwt.devices import Device, claim_gpus
from dlwt.engine import evaluate, fixed_batch
from dlwt.errors import DlwtError
from dlwt.provenance import provenance

# torchvision's pretrained weights, the bp reference (torchvision's meta holds their published top-1:
# 69.758 and 76.130); V1 = the original recipe, 90 epochs of step-decay SGD like params.yaml's
TORCHVISION = {"resnet18": "ResNet18_Weights.IMAGENET1K_V1", "resnet50": "ResNet50_Weights.IMAGENET1K_V1"}


def published_sha256(file_name: str) -> str:
    """The SHA-256 prefix torchvision publishes in a weight file's name (resnet18-f37072fd.pth: f37072fd)."""
    import torch.hub

    return torch.hub.HASH_REGEX.search(file_name).group(1)


def torchvision_weights(arch: str) -> tuple[dict, dict]:
    """(state dict, meta) of torchvision's pretrained `arch`, from $TORCH_HOME's cache or downloaded there.

    Not through torchvision's get_state_dict: it calls torch.hub.load_state_dict_from_url, whose
    weights_only=False (torch 2.x) unpickles whatever a cached file names, so a file planted in the cache
    ran code. Here the cached file must have the SHA-256 prefix published in its name (resnet18-f37072fd.pth;
    torch.hub's HASH_REGEX) and is read by dlwt.checkpoint with weights_only=True."""
    import torch.hub
    import torchvision

    name = TORCHVISION[arch]
    weights = torchvision.models.get_weight(name)
    top1 = weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urllib.parse.urlparse(weights.url).path)
    published = published_sha256(cached.name)
    fix = "delete it to download it again, or pass weights you trust as --checkpoint"
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        try:  # writes a temp file beside the target, checks the hash prefix, then renames (torch.hub)
            torch.hub.download_url_to_file(weights.url, str(cached), hash_prefix=published, progress=False)
        except Exception as e:  # noqa: BLE001  (urllib, hash and disk errors alike: the fix is the same)
            raise DlwtError(f"torchvision weights {name}: could not download ({type(e).__name__}: "
                            f"{str(e).splitlines()[0][:100] if str(e) else ''}); without internet, download "
                            f"{weights.url} elsewhere and pass it as --checkpoint") from None
    state, _ = ckpt_io.load_weights(cached, fix=fix, sha256=published)
    return state, {"weights": f"torchvision:{name}", "published_top1": top1}


def load_into(model, state: dict, source: str, what: str) -> None:
    """Load `state` into `model`: a missing feedback matrix (plain weights into a non-bp model) keeps its
    random start; anything else that does not fit is one line naming `source` and the fix."""
    missing, unexpected = [], []
    try:
        result = model.load_state_dict(state, strict=False)
        missing, unexpected = result.missing_keys, result.unexpected_keys
    except RuntimeError as e:  # shape mismatches
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e)[:160])
        raise DlwtError(f"{source}: weights do not fit {what} ({detail}); pass weights of this arch/stem/"
                        "class count, or the --arch and params model.stem they were trained with") from None
    missing = [k for k in missing if not k.endswith(("feedback", "sign_scale"))]
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise DlwtError(f"{source}: weights do not fit {what} ({len(missing)} missing entries, "
                        f"{len(unexpected)} unexpected, first {first!r}); pass weights of this arch and stem")


def evaluate_checkpoint(params: dict, arch: str, rule: str, seed: int, checkpoint, out: Path,
                        weights: str | None = None) -> dict:
    """Evaluate a checkpoint file (dlwt or plain state dict) or, with weights="torchvision", torchvision's
    pretrained `arch`; writes `out` (JSON) and returns it."""
    from dlwt.data.loaders import make_loader

    stem = params["model"]["stem"]
    if weights == "torchvision":
        if arch not in TORCHVISION or stem != "imagenet":
            raise DlwtError(f"--weights torchvision: torchvision has {'/'.join(TORCHVISION)} with the imagenet "
                            f"stem, not {arch} with params model.stem={stem}")
        state, meta = torchvision_weights(arch)
        source = meta["weights"]
    else:
        checkpoint = Path(checkpoint)
        fix = (f"run `dlwt train` for {arch}-{rule}-s{seed} first, or pass a dlwt checkpoint or a state dict"
               if not checkpoint.exists() else ckpt_io.DEFAULT_FIX + " or a plain state dict")
        state, meta = ckpt_io.load_weights(checkpoint, fix=fix)
        source = str(checkpoint)
        held = tuple(meta.get(k) for k in ("arch", "rule", "seed"))
        if meta and held != (arch, rule, seed):
            raise DlwtError(f"{checkpoint} holds {held[0]}-{held[1]}-s{held[2]}, not {arch}-{rule}-s{seed}: "
                            "pass the matching --arch/--rule/--seed or checkpoint")
        if meta.get("stem", stem) != stem:
            raise DlwtError(f"{checkpoint} was trained with model.stem={meta['stem']}, params say {stem}: "
                            "evaluate it with the params (or overlay) it was trained with")
    t = params["train"]
    dev = Device.resolve(t["device"], amp=t["amp"], channels_last=t["channels_last"])
    device = dev.torch
    val_loader = make_loader("val", params["data"], device)
    model = dlwt.models.build(arch, val_loader.num_classes, rule, stem)
    load_into(model, state, source, f"{arch} ({stem} stem, {val_loader.num_classes} classes of "
              f"data.dataset={params['data']['dataset']})")
    model = model.to(device, memory_format=dev.memory_format)
    stats = evaluate(model, val_loader, device, amp_dtype=dev.amp_dtype)
    x, y = fixed_batch(val_loader, params["train"]["grad_batch"])
    model.eval()  # BatchNorm running statistics, so the measurement does not depend on the batch size
    result = {"arch": arch, "rule": rule, "seed": seed, "epoch": meta.get("epoch"), "checkpoint": source,
              **({k: meta[k] for k in ("weights", "published_top1") if k in meta}),
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
    from dlwt.atomic import check_target
    from dlwt.params import check_seed, load
    check_seed(args.seed)
    check_target(args.out, "file", "--out")  # before the whole evaluation runs, not after it
    params = load(args.params, args.overlay)
    if params["train"]["device"] != "cpu":
        claim_gpus(1)  # evaluation runs on one GPU of its own (before CUDA starts)
    evaluate_checkpoint(params, args.arch, args.rule, args.seed, args.checkpoint, Path(args.out),
                        weights=args.weights)
    return 0


def add_subparser(sub) -> None:
    from dlwt.train import add_run_arguments
    p = sub.add_parser("evaluate", help="checkpoint or weights -> eval JSON (top-1/top-5 error, alignment)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="a dlwt checkpoint (.../final.pt) or a plain state dict")
    src.add_argument("--weights", choices=["torchvision"],
                     help="torchvision's pretrained ImageNet weights of --arch (the bp reference)")
    p.add_argument("--out", required=True, help="e.g. results/<exp>/eval/<arch>-<rule>-s<seed>.json")
    p.set_defaults(func=main)
