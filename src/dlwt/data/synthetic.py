"""Synthetic ILSVRC2012: tiny archives in the exact layout of the real ones, so tests and CI run the real
acquire/extract code. Each class is a colour (hue-spaced), each image a textured variant of it, so a loader's
output can be checked against the true label from the pixels alone.

    dlwt acquire --dataset synthetic --source synthetic --root data --classes 3 --train-per-class 4
    # -> data/raw/synthetic/{ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar,
    #                       ILSVRC2012_devkit_t12.tar.gz, MD5SUMS.json, labels.json}

Layout (as the real release): the train tar holds one <wnid>.tar per class of <wnid>_<n>.JPEG; the val tar
is flat ILSVRC2012_val_<8 digits>.JPEG; the devkit holds data/meta.mat (a 'synsets' struct array written by
scipy with the real fields; leaves have ILSVRC2012_ID 1..K in an order unlike sorted wnids, plus one parent
node) and data/ILSVRC2012_validation_ground_truth.txt (one ILSVRC2012_ID per val image).
"""

import colorsys
import io
import os
import tarfile

import numpy as np
from PIL import Image

from dlwt.atomic import atomic_write, remove_stale_temps, staged_file, write_json_atomic
from dlwt.data.imagenet import ARCHIVES, GROUND_TRUTH, META, acquire, extract, md5sum

FIELDS = (
    "ILSVRC2012_ID",
    "WNID",
    "words",
    "gloss",
    "num_children",
    "children",
    "wordnet_height",
    "num_train_images",
)


def palette(classes):
    """K well-separated RGB colours (equally spaced hues, two brightness levels beyond 6 classes)."""
    out = []
    for k in range(classes):
        v = 0.9 if (k // 6) % 2 == 0 else 0.55
        out.append([int(round(255 * c)) for c in colorsys.hsv_to_rgb((k % 6) / 6 + (k // 12) / 24, 0.9, v)])
    return np.array(out, dtype=np.uint8)


def make_image(colour, size, rng, noise=0.0):
    """A size x size RGB image: the class colour, a faint wave (so images differ), optional pixel noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    wave = 12 * np.sin(2 * np.pi * (rng.uniform(1, 3) * x + rng.uniform(0, 1)))[..., None]
    img = (
        colour[None, None, :].astype(np.float32)
        + wave
        + (rng.normal(0, noise, (size, size, 3)) if noise else 0)
    )
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg(img, quality=95):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _add(tf, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # fixed: the same arguments give the same archive bytes and md5
    tf.addfile(info, io.BytesIO(data))


def write_devkit(path, synsets, truth):
    """devkit tar.gz with meta.mat (scipy.io.savemat of a 'synsets' struct array) and the ground truth."""
    from scipy.io import savemat

    arr = np.zeros((len(synsets), 1), dtype=[(f, object) for f in FIELDS])
    for i, s in enumerate(synsets):
        for f in FIELDS:
            arr[i, 0][f] = s[f]
    buf = io.BytesIO()
    savemat(buf, {"synsets": arr})
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tf:
        _add(tf, META, buf.getvalue())
        _add(tf, GROUND_TRUTH, "".join(f"{t}\n" for t in truth).encode())
    atomic_write(path, out.getvalue())


def write_archives(raw_dir, classes=3, train_per_class=4, val_per_class=2, size=64, seed=0, noise=0.0):
    """Write the three archives, MD5SUMS.json ({role: md5}) and labels.json (the truth) into raw_dir.

    labels.json: {"classes": [{wnid, id, name, colour}] in sorted-wnid order,
                  "train": {file name: wnid}, "val": {file name: wnid}}.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(raw_dir, exist_ok=True)
    remove_stale_temps(raw_dir)  # the temp archives of a killed acquire
    wnids = [f"n{10000000 + 7919 * k:08d}" for k in range(classes)]  # sorted order = k
    perm = rng.permutation(classes)
    if classes > 1 and (perm == np.arange(classes)).all():
        perm = np.roll(perm, 1)  # the real IDs are not in wnid order; never let a test pass by accident
    ids = perm + 1
    colours = palette(classes)
    synsets = [
        dict(
            ILSVRC2012_ID=int(ids[k]),
            WNID=wnids[k],
            words=f"synthetic class {k}",
            gloss=f"colour {colours[k].tolist()}",
            num_children=0,
            children=np.zeros(0),
            wordnet_height=0,
            num_train_images=train_per_class,
        )
        for k in range(classes)
    ]
    synsets.append(
        dict(
            ILSVRC2012_ID=classes + 1,
            WNID="n99999999",
            words="synthetic root",
            gloss="parent of every class, not a class",
            num_children=classes,
            children=ids.astype(float),
            wordnet_height=1,
            num_train_images=0,
        )
    )
    record = {
        "classes": [
            {"wnid": wnids[k], "id": int(ids[k]), "name": synsets[k]["words"], "colour": colours[k].tolist()}
            for k in range(classes)
        ],
        "train": {},
        "val": {},
    }

    paths = {role: os.path.join(raw_dir, name) for role, (name, _) in ARCHIVES.items()}
    with staged_file(paths["train"]) as tmp, tarfile.open(tmp, "w") as outer:  # renamed once complete
        for k, wnid in enumerate(wnids):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as inner:
                for j in range(train_per_class):
                    name = f"{wnid}_{j + 1}.JPEG"
                    _add(inner, name, jpeg(make_image(colours[k], size, rng, noise)))
                    record["train"][name] = wnid
            _add(outer, f"{wnid}.tar", buf.getvalue())
    val_classes = rng.permutation(np.repeat(np.arange(classes), val_per_class))  # classes interleaved
    with staged_file(paths["val"]) as tmp, tarfile.open(tmp, "w") as tf:
        for n, k in enumerate(val_classes, 1):
            name = f"ILSVRC2012_val_{n:08d}.JPEG"
            _add(tf, name, jpeg(make_image(colours[k], size, rng, noise)))
            record["val"][name] = wnids[k]
    write_devkit(paths["devkit"], synsets, [int(ids[k]) for k in val_classes])
    write_json_atomic(os.path.join(raw_dir, "labels.json"), record)
    write_json_atomic(os.path.join(raw_dir, "MD5SUMS.json"), {r: md5sum(p) for r, p in paths.items()})
    return record


def acquire_source(c):
    """source synthetic (dlwt.data.sources): write the archives, then check them as imagenet's are, against
    the MD5SUMS.json written beside them."""
    import json

    write_archives(c["raw_dir"], **c["synthetic"])
    with open(os.path.join(c["raw_dir"], "MD5SUMS.json")) as f:
        return acquire(c["raw_dir"], checksums=json.load(f))


def extract_source(c):
    """source synthetic: imagenet's extract, checked against MD5SUMS.json (checksums=None)."""
    return extract(c["raw_dir"], c["root"], c["dataset"], checksums=None)
