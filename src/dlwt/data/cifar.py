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
import tarfile
import urllib.error
import zlib

import numpy as np
from PIL import Image

from dlwt.atomic import remove_stale_temps, staged_dir, write_json_atomic
from dlwt.data import DataError, dataset_dir, images_dir
from dlwt.data.imagefolder import write_classes
from dlwt.progress import progress


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
    remove_stale_temps(directory)  # the unpack folder of a killed acquire (best effort: may be read-only)
    if not os.path.isdir(folder):
        if not os.path.isfile(archive):
            if not download:
                raise DataError(f"{archive} not found: set data.cifar.download: true to fetch it (needs the "
                                f"internet), or put {s['archive']} from {s['url']} in data.cifar.dir")
            _download(s, directory)
        want = (checksums or {}).get(s["archive"], s["archive_md5"])
        if _md5(archive) != want:
            raise DataError(f"{archive}: MD5 {_md5(archive)}, expected {want}: delete it and fetch it again")
        with staged_dir(folder) as tmp:
            try:
                with tarfile.open(archive, "r:gz") as tar:
                    tar.extractall(tmp, filter="data")  # "data": no absolute paths, links or members outside
            except (tarfile.TarError, EOFError, zlib.error) as e:
                raise DataError(f"{archive}: unreadable archive ({type(e).__name__}: {e}); delete it and "
                                "fetch it again") from None
            inner = os.path.join(tmp, s["folder"])  # the archive holds one folder: its files become `folder`
            if not os.path.isdir(inner):
                raise DataError(f"{archive} has no {s['folder']}/ folder: not the {source} python archive")
            for e in os.scandir(inner):
                os.replace(e.path, os.path.join(tmp, e.name))
            os.rmdir(inner)
    _check_batches(folder, s, checksums)
    return {"batches": folder}


def _download(s, directory):
    """torchvision's MD5-checked download of the archive; offline or a bad URL is one line."""
    from torchvision.datasets.utils import download_url

    try:
        download_url(s["url"], directory, s["archive"], s["archive_md5"])
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:  # offline, DNS, reset, stalled
        raise DataError(f"{s['url']}: download failed ({getattr(e, 'reason', e)}); check the network, or "
                        f"put {s['archive']} in {directory} yourself and set data.cifar.download: false") from None
    except RuntimeError as e:  # torchvision: "File not found or corrupted." (MD5 mismatch)
        raise DataError(f"{s['url']}: {e}: delete {os.path.join(directory, s['archive'])} and "
                        "rerun") from None


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
    remove_stale_temps(dataset_dir(root, dataset))  # images.tmp-/images.old- of a killed extract
    with staged_dir(out) as tmp:
        for split, part in (("train", "train"), ("val", "test")):
            images, labels = read_split(folder, source, part)
            for d in dirs:
                os.makedirs(os.path.join(tmp, split, d), exist_ok=True)
            for i in progress(range(len(images)), total=len(images), desc=f"{source} {split}"):
                Image.fromarray(images[i]).save(os.path.join(tmp, split, dirs[labels[i]], f"{i:05d}.png"))
        write_classes(tmp, dirs, dict(zip(dirs, names)))
        write_json_atomic(os.path.join(tmp, "split.json"),
                          {"source": source, "train": "train batches", "val": "test batch"})
    return out


def acquire_source(c):
    """sources cifar10 / cifar100 (dlwt.data.sources): the archive in data.cifar.dir (default data.raw_dir)."""
    return acquire(c["source"], c["cifar"]["dir"] or c["raw_dir"], c["cifar"]["download"])


def extract_source(c):
    return write_cifar(c["source"], c["cifar"]["dir"] or c["raw_dir"], c["root"], c["dataset"])
