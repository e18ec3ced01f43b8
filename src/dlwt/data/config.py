"""Every key of the `data:` section of params.yaml that the data stage reads, with its default.

The params schema (issue 5) is built from this dict; functions take explicit keyword arguments and the
stage functions in `stages.py` fill them from `resolve(cfg)`.

    python -c "from dlwt.data.config import DATA_DEFAULTS; import pprint; pprint.pprint(DATA_DEFAULTS)"
"""

import copy

# every data source (one declaration: the CLI's --source choices and resolve() read it; the params schema
# lists the same names)
SOURCES = ("imagenet", "synthetic", "digits", "imagefolder", "fashion-mnist", "cifar10", "cifar100")

DATA_DEFAULTS = {
    # --- what and where ---------------------------------------------------------------------------
    "dataset": "imagenet",  # name of the folder under root: data/<dataset>/{images,ffcv}
    "source": "imagenet",  # one of SOURCES
    "root": "data",  # everything the data stage writes lives under here
    "raw_dir": None,  # archives; None -> <root>/raw/<dataset> (ImageNet: data/raw/imagenet)
    "urls": {},  # {"train"|"val"|"devkit": URL}: the user's own download links (ImageNet
    # needs an account, so none is built in); empty -> archives must be local
    "imagefolder": None,  # source=imagefolder: path of the user's tree with train/ and val/
    # --- convert (FFCV DatasetWriter); ffcv-imagenet's ImageNet settings --------------------------
    "max_resolution": 512,  # longest side stored in the .beton (ffcv-imagenet: 512 for ResNet-50)
    "jpeg_quality": 90,
    "compress_probability": 0.5,  # write_mode=proportion: fraction of images stored as JPEG, rest raw
    "write_mode": "proportion",  # raw | jpg | smart | proportion
    "page_size": 1 << 23,  # .beton page (8 MiB, FFCV's default); tiny test sets use 1 << 21
    "on_corrupt": "skip",  # skip: leave out undecodable images, count and name them; fail: stop
    # --- loaders ----------------------------------------------------------------------------------
    "backend": "ffcv",  # ffcv | torchvision (fallback where FFCV cannot be installed; bench baseline)
    "num_workers": 8,  # capped at os.cpu_count() everywhere (FFCV raises above it)
    "batch_size": 256,  # per process
    "res": 224,  # train crop size (RandomResizedCrop); val crop size too
    "val_res": None,  # None -> res
    "min_res": None,  # progressive resizing: first train resolution (None: data.res throughout)
    "ramp": (0, 0),  # epochs where the resolution ramp from min_res to res starts and ends
    "train_crop_scale": (0.08, 1.0),  # RandomResizedCrop's range of crop area (torchvision's default)
    "train_flip": True,           # random horizontal flip (off for data where mirroring changes meaning: digits)
    "crop_ratio": 224 / 256,  # val: centre crop of ratio * shorter side (the usual resize-256/crop-224)
    "os_cache": True,  # FFCV: read the .beton through the page cache (False: FFCV's own cache)
    "seed": 0,  # data order (FFCV RANDOM order / DistributedSampler)
    # --- source=synthetic: tiny archives in the exact ILSVRC2012 layout ---------------------------
    "synthetic": {"classes": 3, "train_per_class": 4, "val_per_class": 2, "size": 64, "seed": 0},
    # --- source=digits: scikit-learn's bundled 8x8 digits as an ImageFolder ------------------------
    "digits": {"size": 32, "val_fraction": 0.2, "seed": 0, "format": "png"},
    # --- source=fashion-mnist: the four idx files (Debian's dataset-fashion-mnist, or a folder) ------
    # dir None -> /usr/share/datasets/fashion-mnist; *_per_class: first n images per class (None: all)
    "fashion_mnist": {"dir": None, "train_per_class": None, "val_per_class": None},
    # --- source=cifar10|cifar100: torchvision's python archives in dir (None -> raw_dir) -------------
    # download: fetch them (MD5-checked) when absent; off by default: nothing leaves the machine unasked
    "cifar": {"dir": None, "download": False},
}

MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # ImageNet statistics on 0..255 pixels (ffcv-imagenet)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


def resolve(cfg=None):
    """DATA_DEFAULTS deep-merged with cfg (a plain dict, e.g. params['data']); unknown keys are errors."""
    from dlwt.data import DataError

    out = copy.deepcopy(DATA_DEFAULTS)
    for key, value in (cfg or {}).items():
        if key not in out:
            raise DataError(f"data config: unknown key {key!r}; expected one of {sorted(out)}")
        if isinstance(out[key], dict) and isinstance(value, dict) and key != "urls":
            unknown = set(value) - set(out[key])
            if unknown:
                raise DataError(
                    f"data config: unknown key(s) {sorted(unknown)} in {key!r}; expected {sorted(out[key])}"
                )
            out[key].update(value)
        else:
            out[key] = value
    if out["raw_dir"] is None:
        out["raw_dir"] = f"{out['root']}/raw/{out['dataset']}"
    if out["val_res"] is None:
        out["val_res"] = out["res"]
    for key, allowed in [
        ("source", SOURCES),
        ("backend", ("ffcv", "torchvision")),
        ("on_corrupt", ("skip", "fail")),
        ("write_mode", ("raw", "jpg", "smart", "proportion")),
    ]:
        if out[key] not in allowed:
            raise DataError(f"data config: {key}={out[key]!r}; expected one of {list(allowed)}")
    return out
