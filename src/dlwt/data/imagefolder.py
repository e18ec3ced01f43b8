"""ImageFolder trees: list and check them, decode-check every image, and the `imagefolder` source.

A tree is  <images>/{train,val}/<class>/<image>  plus  <images>/classes.json  (wnid, index, human name).
Class index = position of the folder name in sorted order (torchvision's ImageFolder order).

    dlwt extract --dataset mine --source imagefolder --imagefolder /path/to/tree --root data
"""

import hashlib
import json
import os
from multiprocessing import Pool

from tqdm import tqdm

from dlwt.data import DataError, images_dir

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val")


def write_json(path, obj):
    """Atomic JSON write: a reader never sees half a file, a crash never leaves one under the final name."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def write_classes(images, wnids, names=None):
    """classes.json: [{index, wnid, name}] in sorted-wnid order, the order every loader uses."""
    names = names or {}
    wnids = sorted(wnids)
    write_json(
        os.path.join(images, "classes.json"),
        [{"index": i, "wnid": w, "name": names.get(w, w)} for i, w in enumerate(wnids)],
    )


def read_classes(images):
    path = os.path.join(images, "classes.json")
    if not os.path.exists(path):
        raise DataError(f"{path} is missing: run `dlwt extract` first")
    with open(path) as f:
        return json.load(f)


def scan(images, split):
    """[(relpath, label)] of one split, sorted like torchvision's ImageFolder; checks the tree's shape.

    The class list comes from train/ (val may not add classes: the model would have no output for them);
    every class folder of the split must hold at least one image.
    """
    top = os.path.join(images, split)
    if not os.path.isdir(top):
        raise DataError(f"{top} is missing: expected an ImageFolder split {split}/<class>/<image>")
    train_top = os.path.join(images, "train")
    classes = sorted(e.name for e in os.scandir(train_top) if e.is_dir()) if os.path.isdir(train_top) else []
    if not classes:
        raise DataError(f"{train_top} has no class folders: expected train/<class>/<image>")
    index = {c: i for i, c in enumerate(classes)}
    samples = []
    for c in sorted(e.name for e in os.scandir(top) if e.is_dir()):
        if c not in index:
            raise DataError(
                f"{os.path.join(top, c)}: class {c!r} is not in {train_top}; "
                "add it to train/ or remove it from this split"
            )
        files = sorted(f for f in os.listdir(os.path.join(top, c)) if f.lower().endswith(EXTENSIONS))
        if not files:
            raise DataError(
                f"{os.path.join(top, c)} is an empty class folder: add images or delete the folder"
            )
        samples += [(os.path.join(split, c, f), index[c]) for f in files]
    if not samples:
        raise DataError(f"{top} holds no images")
    return samples, classes


def _check_one(path):
    """(md5 of the bytes, error or None). A full decode (load()) catches truncated and corrupt files."""
    from PIL import Image

    try:
        with open(path, "rb") as f:
            data = f.read()
        digest = hashlib.md5(data).hexdigest()
    except OSError as e:
        return None, f"unreadable: {e}"
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB").load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError) for bad files
        return digest, f"{type(e).__name__}: {e}"
    return digest, None


def verify(images, samples, on_corrupt="skip", num_workers=1, desc="verify"):
    """Decode every image once. Returns (good samples, [(relpath, error)], sha256 digest of the inputs).

    on_corrupt='skip' leaves bad images out and returns them (callers record and print the count);
    'fail' raises DataError naming the first one. The digest covers path, label and bytes of every good
    image, so it changes exactly when the converted dataset would.
    """
    workers = max(1, min(num_workers, os.cpu_count() or 1))
    paths = [os.path.join(images, rel) for rel, _ in samples]
    if workers == 1:
        results = map(_check_one, paths)
    else:
        pool = Pool(workers)
        results = pool.imap(_check_one, paths, chunksize=64)
    good, bad, h = [], [], hashlib.sha256()
    try:
        for (rel, label), (md5, err) in zip(
            samples, tqdm(results, total=len(samples), desc=desc, leave=False)
        ):
            if err is None:
                good.append((rel, label))
                h.update(f"{rel}\0{label}\0{md5}\n".encode())
                continue
            if on_corrupt == "fail":
                raise DataError(
                    f"{os.path.join(images, rel)}: corrupt image ({err}); delete or replace "
                    "it, or set data.on_corrupt=skip to leave it out"
                )
            bad.append((rel, err))
    finally:
        if workers > 1:
            pool.terminate()
    return good, bad, h.hexdigest()


def link_tree(src, root, dataset):
    """source=imagefolder: check the user's tree, then point data/<dataset>/images/{train,val} at it.

    Symlinks, not copies: the user's tree may be large. classes.json is written beside them.
    """
    if not src:
        raise DataError(
            "source=imagefolder needs data.imagefolder (or --imagefolder): a tree with train/ and val/"
        )
    src = os.path.abspath(src)
    for split in SPLITS:
        scan(src, split)  # raises on a missing split, empty class, unknown val class
    _, classes = scan(src, "train")
    out = images_dir(root, dataset)
    tmp = f"{out}.tmp-{os.getpid()}"
    os.makedirs(tmp)
    for split in SPLITS:
        os.symlink(os.path.join(src, split), os.path.join(tmp, split))
    write_classes(tmp, classes)
    _replace_dir(tmp, out)
    return out


def _replace_dir(tmp, out):
    """Move a finished tree into place; an older tree at the final name goes only once the new one exists."""
    import shutil

    if os.path.lexists(out):
        old = f"{out}.old-{os.getpid()}"
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        os.replace(tmp, out)
