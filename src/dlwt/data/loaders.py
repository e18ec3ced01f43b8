"""Loaders for training and evaluation: FFCV (ffcv-imagenet's pipelines) or torchvision (same transforms).

    from dlwt.data.loaders import make_loader
    loader = make_loader("train", {"dataset": "imagenet", "batch_size": 256}, torch.device("cuda"))
    for images, labels in loader: ...   # float32 NCHW channels_last, normalised; int64 labels; on device

train: random-resized crop to res (scale 0.08-1, ratio 3/4-4/3) + horizontal flip; val: centre crop of
crop_ratio x shorter side (224/256) resized to val_res. Both normalise with the ImageNet mean/std.
"""

import os
import sys

import numpy as np
import torch

from dlwt.data import DataError, ffcv_dir, images_dir
from dlwt.data.config import MEAN, STD, resolve
from dlwt.data.imagefolder import read_classes, scan


class Batches:
    """(images, labels) batches on `device`, plus what a trainer needs to know about the data."""

    def __init__(self, loader, *, device, num_images, classes, skipped=(), sampler=None, on_corrupt="skip",
                 seed=0):
        self.loader, self.device, self.sampler, self.on_corrupt = loader, device, sampler, on_corrupt
        self.seed = seed
        self.num_images, self.classes, self.num_classes = num_images, classes, len(classes)
        self.skipped = list(
            skipped
        )  # corrupt images left out: from the sidecar (ffcv) or as met (torchvision)

    def __len__(self):
        return len(self.loader)

    def set_epoch(self, epoch):
        """Make epoch `epoch`'s order (and torchvision's augmentation seeds) a function of (seed, epoch)
        alone, so that a run resumed at this epoch sees the data an uninterrupted run would."""
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        if hasattr(self.loader, "next_epoch"):  # FFCV: its order is drawn from (seed, next_epoch)
            self.loader.next_epoch = epoch
        elif getattr(self.loader, "generator", None) is not None:  # shuffle and worker base seeds
            self.loader.generator.manual_seed(self.seed * 100003 + epoch)

    def __iter__(self):
        for batch in self.loader:
            if len(batch) == 3:  # torchvision: (x, y, corrupt files met in this batch)
                x, y, bad = batch
                for path, err in bad:
                    if self.on_corrupt == "fail":
                        raise DataError(
                            f"{path}: corrupt image ({err}); delete or replace it, or set "
                            "data.on_corrupt=skip to leave it out"
                        )
                    print(f"dlwt: skipped corrupt image {path} ({err})", file=sys.stderr)
                    self.skipped.append(path)
                if len(y) == 0:
                    continue
                x = x.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                y = y.to(self.device, non_blocking=True)
            else:
                x, y = batch
            yield x, y


def _workers(n):
    return max(0, min(int(n), os.cpu_count() or 1))


def ffcv_loader(
    path, split, *, batch_size, num_workers, res, crop_ratio, device, distributed=False, seed=0, os_cache=True,
    crop_scale=(0.08, 1.0),
    flip=True,
):
    """FFCV Loader over a .beton with ffcv-imagenet's pipelines; returns the raw ffcv Loader."""
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import (
        NormalizeImage,
        RandomHorizontalFlip,
        Squeeze,
        ToDevice,
        ToTensor,
        ToTorchImage,
    )

    device = torch.device(device)  # FFCV's ToDevice wants a torch.device, not a string
    mean, std = np.array(MEAN), np.array(STD)
    if split == "train":
        decode = [RandomResizedCropRGBImageDecoder((res, res), scale=tuple(crop_scale))]
        decode += [RandomHorizontalFlip()] if flip else []
    else:
        decode = [CenterCropRGBImageDecoder((res, res), ratio=crop_ratio)]
    if device.type == "cuda":  # normalise on the GPU after the transfer, as ffcv-imagenet does
        image = decode + [
            ToTensor(),
            ToDevice(device, non_blocking=True),
            ToTorchImage(),
            NormalizeImage(mean, std, np.float32),
        ]
    else:  # on CPU NormalizeImage after ToTensor hangs Loader.__init__: normalise the numpy batch first
        image = decode + [NormalizeImage(mean, std, np.float32), ToTensor(), ToDevice(device), ToTorchImage()]
    # Squeeze(1), not ffcv-imagenet's Squeeze(): that also drops the batch dim of a last batch of one,
    # ToDevice then fails in FFCV's worker thread and the loader waits forever.
    label = [IntDecoder(), ToTensor(), Squeeze(1), ToDevice(device, non_blocking=True)]
    return Loader(
        path,
        batch_size=batch_size,
        num_workers=max(1, _workers(num_workers)),
        order=OrderOption.RANDOM if split == "train" else OrderOption.SEQUENTIAL,
        os_cache=os_cache,
        drop_last=(split == "train"),
        distributed=distributed,
        seed=seed,
        pipelines={"image": image, "label": label},
    )


class _Folder(torch.utils.data.Dataset):
    """ImageFolder over scanned samples; a corrupt image comes back as a marker, not an exception, so the
    main process can skip and count it or stop with a one-line error (a worker's traceback is not one)."""

    def __init__(self, images, samples, transform):
        self.images, self.samples, self.transform = images, samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image

        rel, label = self.samples[i]
        path = os.path.join(self.images, rel)
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
            return None, label, (path, f"{type(e).__name__}: {e}")
        return self.transform(img), label, None


def _collate(batch):
    good = [(x, y) for x, y, bad in batch if bad is None]
    bad = [b for _, _, b in batch if b is not None]
    if not good:
        return torch.zeros(0), torch.zeros(0, dtype=torch.int64), bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good], dtype=torch.int64), bad


def transforms_for(split, res, crop_ratio, crop_scale=(0.08, 1.0), flip=True):
    """torchvision transforms matching the FFCV pipelines."""
    from torchvision import transforms as T

    norm = T.Normalize([m / 255 for m in MEAN], [s / 255 for s in STD])
    if split == "train":
        return T.Compose(
            [T.RandomResizedCrop(res, scale=tuple(crop_scale), antialias=True),
             *([T.RandomHorizontalFlip()] if flip else []), T.ToTensor(), norm]
        )
    return T.Compose(
        [T.Resize(round(res / crop_ratio), antialias=True), T.CenterCrop(res), T.ToTensor(), norm]
    )


def torchvision_loader(
    images, split, *, batch_size, num_workers, res, crop_ratio, device, distributed=False, seed=0,
    crop_scale=(0.08, 1.0),
    flip=True,
):
    """(DataLoader, sampler or None, number of images) over <images>/<split> with transforms_for()."""
    samples, _ = scan(images, split)
    ds = _Folder(images, samples, transforms_for(split, res, crop_ratio, crop_scale, flip))
    sampler = None
    if distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(ds, shuffle=(split == "train"), seed=seed)
    gen = torch.Generator().manual_seed(seed)
    workers = _workers(num_workers)
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=(split == "train" and sampler is None),
        sampler=sampler,
        num_workers=workers,
        collate_fn=_collate,
        drop_last=(split == "train"),
        generator=gen,
        pin_memory=torch.device(device).type == "cuda",
        # fresh workers each epoch: their RNG then comes from the generator that set_epoch() reseeds
        persistent_workers=False,
    )
    return loader, sampler, len(samples)


def make_loader(split, cfg=None, device="cpu", distributed=False):
    """Batches of (images, labels) for split 'train' or 'val', from data cfg (see config.DATA_DEFAULTS)."""
    if split not in ("train", "val"):
        raise DataError(f"split {split!r}: expected 'train' or 'val'")
    c = resolve(cfg)
    device = torch.device(device)
    images = images_dir(c["root"], c["dataset"])
    classes = read_classes(images)
    res = c["res"] if split == "train" else c["val_res"]
    common = dict(
        batch_size=c["batch_size"],
        num_workers=c["num_workers"],
        res=res,
        crop_ratio=c["crop_ratio"],
        crop_scale=c["train_crop_scale"],
        flip=c["train_flip"],
        device=device,
        distributed=distributed,
        seed=c["seed"],
    )
    if c["backend"] == "ffcv":
        import json

        path = os.path.join(ffcv_dir(c["root"], c["dataset"]), f"{split}.beton")
        if not os.path.exists(f"{path}.json"):  # the sidecar is written last: no sidecar, no finished beton
            raise DataError(f"{path} is missing or unfinished: run `dlwt convert --dataset {c['dataset']}`")
        with open(f"{path}.json") as f:
            info = json.load(f)
        loader = ffcv_loader(path, split, os_cache=c["os_cache"], **common)
        return Batches(
            loader,
            device=device,
            num_images=info["images"],
            classes=classes,
            skipped=[s["file"] for s in info["skipped_corrupt"]],
            seed=c["seed"],
        )
    loader, sampler, n = torchvision_loader(images, split, **common)
    return Batches(
        loader, device=device, num_images=n, classes=classes, sampler=sampler, on_corrupt=c["on_corrupt"],
        seed=c["seed"],
    )
