"""scikit-learn's bundled 8x8 digits (real data, installed with scikit-learn, no download) as an ImageFolder.

    dlwt extract --dataset digits --source digits --root data
    # -> data/digits/images/{train,val}/<0..9>/<index>.png  + classes.json   (1,797 images, 10 classes)

Upscaled (nearest neighbour) to `size` px and repeated to RGB, so the ImageNet code path (3 channels, FFCV
RGBImageField) runs unchanged. The split is fixed: a stratified split with a fixed seed, recorded in
split.json. Use it to show the loop learns; it is too easy to rank learning rules.
"""

import os

import numpy as np
from PIL import Image

from dlwt.atomic import remove_stale_temps, staged_dir, write_json_atomic
from dlwt.data import DataError, dataset_dir, images_dir
from dlwt.data.imagefolder import write_classes
from dlwt.progress import progress


def split_indices(n_val_fraction, seed, labels):
    """Stratified train/val index split; the same arguments always give the same split."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    train, val = train_test_split(idx, test_size=n_val_fraction, random_state=seed, stratify=labels)
    return np.sort(train), np.sort(val)


def write_digits(root, dataset="digits", size=32, val_fraction=0.2, seed=0, format="png"):
    """Write the digits ImageFolder; folder names '0'..'9' sort to the digit, so class index = digit."""
    from sklearn.datasets import load_digits

    if format not in ("png", "jpeg"):
        raise DataError(f"data.digits.format={format!r}; expected 'png' or 'jpeg'")
    if size < 8:
        raise DataError(f"data.digits.size={size}; expected >= 8 (the images are 8x8)")
    d = load_digits()
    pixels = np.round(d.images * (255 / 16)).astype(np.uint8)  # digits are 0..16
    train, val = split_indices(val_fraction, seed, d.target)
    out = images_dir(root, dataset)
    remove_stale_temps(dataset_dir(root, dataset))  # images.tmp-/images.old- of a killed extract
    ext = "png" if format == "png" else "JPEG"
    with staged_dir(out) as tmp:
        for split, idx in (("train", train), ("val", val)):
            for c in range(10):
                os.makedirs(os.path.join(tmp, split, str(c)), exist_ok=True)
            for i in progress(idx, total=len(idx), desc=f"digits {split}"):
                img = Image.fromarray(pixels[i]).resize((size, size), Image.NEAREST).convert("RGB")
                img.save(os.path.join(tmp, split, str(d.target[i]), f"{i:04d}.{ext}"), quality=95)
        write_classes(tmp, [str(c) for c in range(10)], {str(c): f"digit {c}" for c in range(10)})
        write_json_atomic(
            os.path.join(tmp, "split.json"),
            {"seed": seed, "val_fraction": val_fraction, "train": train.tolist(), "val": val.tolist()},
        )
    return out


def acquire_source(c):
    """source digits (dlwt.data.sources): bundled with scikit-learn, nothing to fetch."""
    import sklearn.datasets  # noqa: F401

    return {}


def extract_source(c):
    return write_digits(c["root"], c["dataset"], **c["digits"])
