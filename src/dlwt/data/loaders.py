"""Loaders for training and evaluation: FFCV (ffcv-imagenet's pipelines) or torchvision (same transforms).

    from dlwt.data.loaders import make_loader
    loader = make_loader("train", {"dataset": "imagenet", "batch_size": 256}, torch.device("cuda"))
    loader.set_epoch(3)                       # the order (and torchvision's augmentation) of epoch 3
    for images, labels in loader: ...         # float32 NCHW channels_last, normalised; int64 labels; on device

train: random-resized crop to res (scale 0.08-1, ratio 3/4-4/3) + horizontal flip; val: centre crop of
crop_ratio x shorter side (224/256) resized to val_res. One code path for every device: both backends send
uint8 images to the device and `normalize` turns them into floats there with torch ops (no FFCV GPU-only
transform: FFCV's NormalizeImage after ToDevice(cuda) imports cupy, ffcv/transforms/normalize.py
generate_code_gpu). Under DDP a val split is sharded without padding, so every image counts exactly once.

Reproducibility: the torchvision backend seeds each image's augmentation by (seed, epoch, index), so a run
is the same whatever the worker count and a run resumed mid-epoch sees what an uninterrupted one saw.
FFCV draws its random crops from numba's unseeded generator: its order is seeded, its crops are not.
"""

import json
import os
import signal
import sys

import numpy as np
import torch

from dlwt.data import DataError, ffcv_dir, images_dir
from dlwt.data.config import MEAN, STD, resolve
from dlwt.data.imagefolder import read_classes, scan
from dlwt.devices import workers

_STATS = {}


def normalize(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 NCHW (any device) -> float32 on `device`, channels_last, (x - mean) / std. The same function for
    CPU, CUDA and the meta device the tests stand in with."""
    key = (device.type, device.index)
    if key not in _STATS:
        _STATS[key] = tuple(torch.tensor(v, dtype=torch.float32, device=device).view(1, 3, 1, 1) for v in (MEAN, STD))
    mean, std = _STATS[key]
    x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    return x.float().sub_(mean).div_(std)


def res_for_epoch(c: dict, epoch: int) -> int:
    """Train resolution of (0-based) `epoch`: data.res, or with data.min_res set, ffcv-imagenet's progressive
    resizing: min_res until data.ramp[0], then linear to data.res at data.ramp[1], rounded to a multiple of 32
    (of 8 below 128 px, for small images)."""
    lo, hi = c.get("min_res"), c["res"]
    if not lo:
        return hi
    start, end = c.get("ramp") or (0, 0)
    if epoch <= start:
        return lo
    if epoch >= end:
        return hi
    step = 32 if hi >= 128 else 8
    return max(step, int(round(float(np.interp(epoch, [start, end], [lo, hi])) / step)) * step)


class EpochOrder(torch.utils.data.Sampler):
    """Indices of one epoch for one rank: a permutation drawn from (seed, epoch) (train) or 0..n-1 (val),
    rank r taking every world-th; train drops the tail so every rank has as many; `start` skips what a resumed
    run already trained on. Replaces DistributedSampler and the loader's generator with one rule."""

    def __init__(self, n, *, shuffle, seed, rank=0, world=1, batch_size=1):
        self.n, self.shuffle, self.seed, self.rank, self.world, self.batch = n, shuffle, seed, rank, world, batch_size
        self.epoch, self.start = 0, 0

    def _indices(self):
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
            order = order[: self.n // self.world * self.world]  # equal shares (train drops the tail anyway)
        else:
            order = list(range(self.n))
        return order[self.rank :: self.world]

    def __iter__(self):
        return iter(self._indices()[self.start * self.batch :])

    def __len__(self):
        return max(0, len(self._indices()) - self.start * self.batch)


class Batches:
    """(images, labels) batches on `device`, plus what a trainer needs to know about the data."""

    def __init__(self, loader, *, device, num_images, classes, skipped=(), on_corrupt="skip", order=None,
                 dataset=None, decoder=None, full_batches=None):
        self.loader, self.device, self.on_corrupt = loader, device, on_corrupt
        self.order, self.dataset, self.decoder = order, dataset, decoder  # torchvision's / FFCV's handles
        self.num_images, self.classes, self.num_classes = num_images, classes, len(classes)
        self.skipped = list(skipped)  # corrupt images left out: from the sidecar (ffcv) or as met (torchvision)
        self._len = full_batches if full_batches is not None else len(loader)
        self._skip = 0

    def __len__(self):
        """Batches in a whole epoch (the scheduler's steps per epoch), whatever set_epoch's `start`."""
        return self._len

    def set_epoch(self, epoch, start=0, res=None):
        """Make the next pass epoch `epoch`'s data, a function of (seed, epoch) alone, beginning at batch
        `start` (a run resumed mid-epoch), at train resolution `res` (progressive resizing)."""
        if self.order is not None:  # torchvision
            self.order.epoch, self.order.start = epoch, start
            self.dataset.epoch = epoch
            if res is not None:
                self.dataset.set_res(res)
            self._skip = 0
        else:  # FFCV: its order is drawn from (seed, next_epoch); skipped batches are read and dropped
            self.loader.next_epoch = epoch
            if res is not None and self.decoder is not None:
                self.decoder.output_size = (res, res)  # as ffcv-imagenet does between epochs
            self._skip = start

    def __iter__(self):
        skip, self._skip = self._skip, 0
        batches = iter(self.loader)
        try:
            yield from self._batches(batches, skip)
        finally:
            _end_early(batches)

    def _batches(self, batches, skip):
        for i, batch in enumerate(batches):
            if i < skip:
                continue
            if len(batch) == 3:  # torchvision: (x, y, corrupt files met in this batch)
                x, y, bad = batch
                for path, err in bad:
                    if self.on_corrupt == "fail":
                        raise DataError(f"{path}: corrupt image ({err}); delete or replace it, or set "
                                        "data.on_corrupt=skip to leave it out")
                    print(f"dlwt: skipped corrupt image {path} ({err})", file=sys.stderr)
                    self.skipped.append(path)
                if len(y) == 0:
                    continue
            else:
                x, y = batch
            yield normalize(x, self.device), y.to(self.device, non_blocking=True)


def _end_early(batches) -> None:
    """End an FFCV epoch left before its end (fixed_batch takes a few batches; a stop): its EpochIterator is a
    thread that only a close ends, holding its slot buffers (~190 MB of GPU memory at 256 x 224 px) until then.
    Checked in ffcv/loader/epoch_iterator.py: close() sets terminate_event, which the thread reads when its
    output queue stays full for 0.5 s, and releases the memory context at once; so set the event, let the
    thread return, then close. A finished pass (the thread gone) and torchvision's iterator are left alone."""
    if getattr(batches, "terminate_event", None) is None or not batches.is_alive():
        return
    batches.terminate_event.set()
    batches.join(timeout=60)
    batches.close()


def ffcv_loader(path, split, *, batch_size, num_workers, res, crop_ratio, device, rank=0, world=1, seed=0,
                os_cache=True, crop_scale=(0.08, 1.0), flip=True):
    """(FFCV Loader over a .beton with ffcv-imagenet's decoders, the train decoder or None); uint8 batches."""
    from dlwt.data.ffcv_io import use_safe_numba_layer

    use_safe_numba_layer()
    from ffcv.fields.basics import IntDecoder
    from ffcv.fields.rgb_image import CenterCropRGBImageDecoder, RandomResizedCropRGBImageDecoder
    from ffcv.loader import Loader, OrderOption
    from ffcv.transforms import RandomHorizontalFlip, Squeeze, ToDevice, ToTensor, ToTorchImage

    device = torch.device(device)  # FFCV's ToDevice wants a torch.device, not a string
    if split == "train":
        decoder = RandomResizedCropRGBImageDecoder((res, res), scale=tuple(crop_scale))
        image = [decoder] + ([RandomHorizontalFlip()] if flip else [])
    else:
        decoder = CenterCropRGBImageDecoder((res, res), ratio=crop_ratio)
        image = [decoder]
    # uint8 HWC -> tensor -> device -> NCHW view (channels_last); normalize() makes floats on the device.
    # ToTorchImage(convert_back_int16=False): its int16 path is for NormalizeImage's float16 output only.
    image += [ToTensor(), ToDevice(device, non_blocking=True), ToTorchImage(channels_last=True,
                                                                          convert_back_int16=False)]
    # Squeeze(1), not ffcv-imagenet's Squeeze(): that also drops the batch dim of a last batch of one,
    # ToDevice then fails in FFCV's worker thread and the loader waits forever.
    label = [IntDecoder(), ToTensor(), Squeeze(1), ToDevice(device, non_blocking=True)]
    kw = {}
    if split == "val" and world > 1:  # rank r reads r, r+world, ...: no padding duplicates
        with open(f"{path}.json") as f:
            n = json.load(f)["images"]
        kw["indices"] = np.arange(rank, n, world)
    loader = Loader(path, batch_size=batch_size, num_workers=max(1, workers(num_workers)),
                    order=OrderOption.RANDOM if split == "train" else OrderOption.SEQUENTIAL, os_cache=os_cache,
                    drop_last=(split == "train"), distributed=(split == "train" and world > 1), seed=seed,
                    pipelines={"image": image, "label": label}, **kw)
    return loader, decoder if split == "train" else None


class _Folder(torch.utils.data.Dataset):
    """ImageFolder over scanned samples with per-image seeded augmentation; a corrupt image comes back as a
    marker, not an exception, so the main process can skip and count it or stop with a one-line error."""

    def __init__(self, images, samples, transform, seed):
        self.images, self.samples, self.transform, self.seed, self.epoch = images, samples, transform, seed, 0

    def set_res(self, res):
        self.transform.transforms[0].size = (res, res)  # RandomResizedCrop comes first (transforms_for)

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
        # torchvision's random transforms draw from the global torch RNG: seed it for this image alone
        # (fork_rng restores the caller's state, so the main process's RNG is untouched with 0 workers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * 1000003 + self.epoch) * 10000019 + i) % 2**64)  # big seeds: no overflow
            return self.transform(img), label, None


def _collate(batch):
    good = [(x, y) for x, y, bad in batch if bad is None]
    bad = [b for _, _, b in batch if b is not None]
    if not good:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), bad
    return torch.stack([x for x, _ in good]), torch.tensor([y for _, y in good], dtype=torch.int64), bad


def transforms_for(split, res, crop_ratio, crop_scale=(0.08, 1.0), flip=True):
    """torchvision transforms matching the FFCV pipelines, ending in a uint8 CHW tensor (see normalize)."""
    from torchvision import transforms as T

    if split == "train":
        return T.Compose([T.RandomResizedCrop(res, scale=tuple(crop_scale), antialias=True),
                          *([T.RandomHorizontalFlip()] if flip else []), T.PILToTensor()])
    return T.Compose([T.Resize(round(res / crop_ratio), antialias=True), T.CenterCrop(res), T.PILToTensor()])


def _leave_stop_signals_to_the_trainer(worker_id: int) -> None:
    """DataLoader workers ignore SIGTERM and SIGINT. SLURM's time limit and scancel signal every process of a
    job step and Ctrl-C the whole foreground group: a worker killed by it made torch raise "DataLoader worker
    killed by signal" in the trainer (from its SIGCHLD handler, at any point of a step), so the run ended in a
    traceback instead of saving at the next step boundary. Workers still end: on the trainer's shutdown
    message, or within torch's watchdog interval (5 s) once the trainer has gone (dlwt train's os._exit)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def torchvision_loader(images, split, *, batch_size, num_workers, res, crop_ratio, device, rank=0, world=1,
                       seed=0, crop_scale=(0.08, 1.0), flip=True):
    """(DataLoader, its EpochOrder, its dataset, number of images) over <images>/<split>."""
    samples, _ = scan(images, split)
    ds = _Folder(images, samples, transforms_for(split, res, crop_ratio, crop_scale, flip), seed)
    order = EpochOrder(len(samples), shuffle=(split == "train"), seed=seed, rank=rank, world=world,
                       batch_size=batch_size)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=batch_size, sampler=order, num_workers=workers(num_workers), collate_fn=_collate,
        drop_last=(split == "train"), pin_memory=torch.device(device).type == "cuda",
        worker_init_fn=_leave_stop_signals_to_the_trainer,
        # fresh workers each epoch: they copy the dataset after set_epoch() set its epoch and resolution
        persistent_workers=False)
    return loader, order, ds, len(samples)


def checked_sidecar(path, images, classes, dataset):
    """The .beton's sidecar, once the pair is known to be whole and current: the sidecar is written last (no
    sidecar, no finished beton), records the beton's byte count (a truncated copy would make FFCV read past
    its end) and the classes it was converted with (a beton older than classes.json gives labels the model
    has no output for: an IndexError deep in the loss)."""
    rerun = f"run `dlwt convert --dataset {dataset}` again"
    if not os.path.exists(f"{path}.json") or not os.path.exists(path):
        raise DataError(f"{path} is missing or unfinished: run `dlwt convert --dataset {dataset}`")
    try:
        with open(f"{path}.json") as f:
            info = json.load(f)
        size, per_class = info["bytes"], list(info["per_class"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{path}.json: not a convert sidecar ({type(e).__name__}: {e}); {rerun}") from None
    if os.path.getsize(path) != size:
        raise DataError(f"{path}: {os.path.getsize(path)} bytes, its sidecar says {size}: the file is truncated "
                        f"or was changed after convert; {rerun}")
    if per_class != [cl["wnid"] for cl in classes]:
        raise DataError(f"{path} was converted with {len(per_class)} classes that differ from "
                        f"{os.path.join(images, 'classes.json')} "
                        f"({len(classes)}): the images were extracted again since; {rerun}")
    return info


def make_loader(split, cfg=None, device="cpu", rank=0, world=1):
    """Batches of (images, labels) for split 'train' or 'val', from data cfg (params['data']); under DDP
    pass this process's rank and the world size."""
    if split not in ("train", "val"):
        raise DataError(f"split {split!r}: expected 'train' or 'val'")
    c = resolve(cfg)
    device = torch.device(device)
    images = images_dir(c["root"], c["dataset"])
    classes = read_classes(images)
    res = res_for_epoch(c, 0) if split == "train" else c["val_res"]
    common = dict(batch_size=c["batch_size"], num_workers=c["num_workers"], res=res, crop_ratio=c["crop_ratio"],
                  crop_scale=c["train_crop_scale"], flip=c["train_flip"], device=device, rank=rank, world=world,
                  seed=c["seed"])
    if c["backend"] == "ffcv":
        path = os.path.join(ffcv_dir(c["root"], c["dataset"]), f"{split}.beton")
        info = checked_sidecar(path, images, classes, c["dataset"])
        loader, decoder = ffcv_loader(path, split, os_cache=c["os_cache"], **common)
        batches = Batches(loader, device=device, num_images=info["images"], classes=classes, decoder=decoder,
                          skipped=[s["file"] for s in info["skipped_corrupt"]])
    else:
        loader, order, ds, n = torchvision_loader(images, split, **common)
        batches = Batches(loader, device=device, num_images=n, classes=classes, on_corrupt=c["on_corrupt"],
                          order=order, dataset=ds, full_batches=len(loader))
    if split == "train" and len(batches) == 0:  # training drops the last partial batch: none would be left
        raise DataError(f"data.batch_size {c['batch_size']}{f' x {world} GPUs' if world > 1 else ''} is larger than "
                        f"the {batches.num_images} training images of {c['dataset']}: lower data.batch_size")
    return batches
