"""Fashion-MNIST (Xiao et al. 2017, MIT licence: 60k train + 10k test 28x28 grey images, 10 classes) as an
ImageFolder, from the four idx files.

    apt-get install dataset-fashion-mnist          # Debian/Ubuntu: /usr/share/datasets/fashion-mnist (31 MB)
    dlwt acquire --params params.yaml --overlay config/demo.yaml   # finds the files, checks their MD5s
    dlwt extract --params params.yaml --overlay config/demo.yaml   # -> data/<dataset>/images/{train,val}/<0..9>/

Elsewhere give `data.fashion_mnist.dir`: a folder holding the idx files, gzipped or not; torchvision's
`FashionMNIST(root, download=True)` puts them in <root>/FashionMNIST/raw where the internet is reachable.
The MD5s are those of the decompressed files (Debian re-gzipped them, so the .gz bytes differ from the
originals). `val` is the official test set. `train_per_class` / `val_per_class` keep the first n images
of each class in file order (a fixed, stratified subset, for runs that must be short); null keeps all.
Images are stored as PNG repeated to RGB, so the ImageNet code path (3 channels) runs unchanged.
"""

import gzip
import hashlib
import os
import zlib

import numpy as np
from PIL import Image

from dlwt.atomic import remove_stale_temps, staged_dir, write_json_atomic
from dlwt.data import DataError, dataset_dir, images_dir
from dlwt.data.imagefolder import write_classes
from dlwt.progress import progress

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist installs them
# decompressed MD5 of each idx file (github.com/zalandoresearch/fashion-mnist, README "Get the Data")
FILES = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
SPLITS = {"train": "train", "val": "t10k"}  # our split name -> the idx file prefix
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle boot")
HOW = ("install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set data.fashion_mnist.dir "
       "to a folder with the four idx files (torchvision.datasets.FashionMNIST(root, download=True) fetches "
       "them into <root>/FashionMNIST/raw)")


def _read(path):
    """The file's bytes, decompressed if .gz; a damaged one (a bad byte makes zlib.error, a cut one EOFError,
    a bad CRC gzip.BadGzipFile) is one line naming it."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: unreadable ({type(e).__name__}: {e}); replace it: {HOW}") from None


def find(directory=None, checksums=None):
    """{name: path} of the four idx files in `directory` (default: Debian's), each MD5-checked after
    decompression (`checksums`: {name: md5}, default FILES; tests pass their own); DataError naming the
    first missing or wrong file and how to get it."""
    directory = directory or DEFAULT_DIR
    found = {}
    for name, md5 in (checksums or FILES).items():
        path = next((p for p in (os.path.join(directory, name + ".gz"), os.path.join(directory, name))
                     if os.path.isfile(p)), None)
        if path is None:
            raise DataError(f"Fashion-MNIST file {os.path.join(directory, name)}[.gz] is missing: {HOW}")
        got = hashlib.md5(_read(path)).hexdigest()
        if got != md5:
            raise DataError(f"{path}: decompressed MD5 {got}, expected {md5} (a corrupt or different file); "
                            f"replace it: {HOW}")
        found[name] = path
    return found


def read_idx(path):
    """An idx file as a uint8 array (images: n x 28 x 28, labels: n)."""
    data = _read(path)
    ndim = data[3]
    if data[:3] != b"\x00\x00\x08":  # magic: two zero bytes, type 0x08 = unsigned byte
        raise DataError(f"{path}: not an unsigned-byte idx file; {HOW}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def subset(labels, per_class):
    """Indices of the first `per_class` images of each class, in file order (None: all)."""
    if per_class is None:
        return np.arange(len(labels))
    keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASSES))])
    return np.sort(keep)


def write_fashion_mnist(root, dataset="fashion-mnist", dir=None, train_per_class=None, val_per_class=None,
                        checksums=None):
    """Write data/<dataset>/images/{train,val}/<0..9>/<index>.png, classes.json and split.json."""
    files = find(dir, checksums)
    out = images_dir(root, dataset)
    remove_stale_temps(dataset_dir(root, dataset))  # images.tmp-/images.old- of a killed extract
    kept = {}
    with staged_dir(out) as tmp:
        for split, prefix in SPLITS.items():
            images = read_idx(files[f"{prefix}-images-idx3-ubyte"])
            labels = read_idx(files[f"{prefix}-labels-idx1-ubyte"])
            idx = subset(labels, train_per_class if split == "train" else val_per_class)
            kept[split] = idx.tolist()
            for c in range(len(CLASSES)):
                os.makedirs(os.path.join(tmp, split, str(c)), exist_ok=True)
            for i in progress(idx, total=len(idx), desc=f"fashion-mnist {split}"):
                Image.fromarray(images[i]).convert("RGB").save(
                    os.path.join(tmp, split, str(labels[i]), f"{i:05d}.png"))
        write_classes(tmp, [str(c) for c in range(len(CLASSES))], {str(c): n for c, n in enumerate(CLASSES)})
        write_json_atomic(os.path.join(tmp, "split.json"), {"train_per_class": train_per_class,
                                                            "val_per_class": val_per_class, **kept})
    return out


def acquire_source(c):
    """source fashion-mnist (dlwt.data.sources): the four idx files found and MD5-checked."""
    return find(c["fashion_mnist"]["dir"])


def extract_source(c):
    return write_fashion_mnist(c["root"], c["dataset"], **c["fashion_mnist"])
