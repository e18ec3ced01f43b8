"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009: 50k train + 10k test 32x32 colour images) as an ImageFolder, from
the python archives torchvision downloads (cifar-10-python.tar.gz / cifar-100-python.tar.gz).

    dlwt acquire --params params.yaml --overlay config/cifar10.yaml   # find, or (data.cifar.download) fetch
    dlwt extract --params params.yaml --overlay config/cifar10.yaml   # -> data/cifar10/images/{train,val}/<00..09>/

The archive (or its extracted batches) lives in data.cifar.dir (default: data.raw_dir). It is downloaded only
when data.cifar.download is true, by torchvision's downloader, which checks the archive's MD5; every batch
file is then checked against torchvision's MD5 list (CIFAR10.train_list/test_list/meta). `val` is the
official test set; CIFAR-100 uses the 100 fine labels. Class folders are zero-padded indices (sorted order =
label), their names in classes.json.
"""

import hashlib
import os
import pickle
import shutil
import tarfile

import numpy as np
from PIL import Image

from dlwt.data import DataError, images_dir
from dlwt.data.imagefolder import _replace_dir, write_classes, write_json


def spec(source):
    """torchvision's description of the dataset: archive name, URL, MD5s, batch files, label names."""
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = {"cifar10": CIFAR10, "cifar100": CIFAR100}[source]
    return {"folder": cls.base_folder, "archive": cls.filename, "url": cls.url, "archive_md5": cls.tgz_md5,
            "train": [f for f, _ in cls.train_list], "test": [f for f, _ in cls.test_list],
            "meta": cls.meta["filename"], "names_key": cls.meta["key"],
            "md5": {**dict(cls.train_list), **dict(cls.test_list), cls.meta["filename"]: cls.meta["md5"]}}


def _md5(path):
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_batches(folder, s, checksums):
    for name, md5 in (checksums or s["md5"]).items():
        if name == s["archive"]:
            continue
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise DataError(f"{path} is missing: delete {folder} and rerun `dlwt acquire` to unpack the archive again")
        if _md5(path) != md5:
            raise DataError(f"{path}: MD5 {_md5(path)}, expected {md5}: a corrupt or different file; delete "
                            f"{folder} and the archive and fetch it again (data.cifar.download: true)")


def acquire(source, directory, download=False, checksums=None):
    """{'batches': folder} of MD5-checked batch files under `directory`, unpacking (or, with `download`,
    first fetching) the archive; `checksums` ({file: md5}, archive included) replaces torchvision's in tests."""
    s = spec(source)
    folder, archive = os.path.join(directory, s["folder"]), os.path.join(directory, s["archive"])
    if not os.path.isdir(folder):
        if not os.path.isfile(archive):
            if not download:
                raise DataError(f"{archive} not found: set data.cifar.download: true to fetch it (needs the "
                                f"internet), or put {s['archive']} from {s['url']} in data.cifar.dir")
            from torchvision.datasets.utils import download_url

            download_url(s["url"], directory, s["archive"], s["archive_md5"])  # MD5-checked
        want = (checksums or {}).get(s["archive"], s["archive_md5"])
        if _md5(archive) != want:
            raise DataError(f"{archive}: MD5 {_md5(archive)}, expected {want}: delete it and fetch it again")
        tmp = f"{folder}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")  # "data": no absolute paths, links or members outside tmp
        _replace_dir(os.path.join(tmp, s["folder"]), folder)
        shutil.rmtree(tmp, ignore_errors=True)
    _check_batches(folder, s, checksums)
    return {"batches": folder}


def _load(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="latin1")  # the archives were pickled by Python 2


def read_split(folder, source, split):
    """(images N x 32 x 32 x 3 uint8, labels N) of 'train' or 'test'."""
    s = spec(source)
    xs, ys = [], []
    for name in s[split]:
        entry = _load(os.path.join(folder, name))
        xs.append(np.asarray(entry["data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(entry["labels"] if "labels" in entry else entry["fine_labels"]))
    return np.concatenate(xs), np.concatenate(ys)


def write_cifar(source, directory, root, dataset, checksums=None):
    """Write data/<dataset>/images/{train,val}/<class index>/<n>.png and classes.json; returns the path."""
    folder = acquire(source, directory, download=False, checksums=checksums)["batches"]
    s = spec(source)
    names = _load(os.path.join(folder, s["meta"]))[s["names_key"]]
    width = len(str(len(names) - 1))
    dirs = [f"{i:0{width}d}" for i in range(len(names))]
    out = images_dir(root, dataset)
    tmp = f"{out}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        for split, part in (("train", "train"), ("val", "test")):
            images, labels = read_split(folder, source, part)
            for d in dirs:
                os.makedirs(os.path.join(tmp, split, d), exist_ok=True)
            for i, (img, y) in enumerate(zip(images, labels)):
                Image.fromarray(img).save(os.path.join(tmp, split, dirs[y], f"{i:05d}.png"))
        write_classes(tmp, dirs, dict(zip(dirs, names)))
        write_json(os.path.join(tmp, "split.json"), {"source": source, "train": "train batches", "val": "test batch"})
        _replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
