"""ImageFolder trees: list and check them, decode-check every image, and the `imagefolder` source.

A tree is  <images>/{train,val}/<class>/<image>  plus  <images>/classes.json  (wnid, index, human name).
Class index = position of the folder name in sorted order (torchvision's ImageFolder order).

    dlwt extract --dataset mine --source imagefolder --imagefolder /path/to/tree --root data
"""

import hashlib
import io
import json
import os
import re
from multiprocessing import Pool

from dlwt.atomic import remove_stale_temps, staged_dir, write_json_atomic
from dlwt.data import DataError, dataset_dir, images_dir, real_path
from dlwt.devices import workers as allowed_workers
from dlwt.progress import progress

EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".webp", ".tif", ".tiff")
SPLITS = ("train", "val")


def check_class_name(name, where):
    """A class folder name that is one plain path component (it becomes a folder and a classes.json entry):
    not hidden, no separator, no NUL. Spaces and other characters of real class names are fine."""
    if not name or name.startswith(".") or re.search(r"[/\\\x00]", name):
        raise DataError(f"{os.path.join(where, name)}: {name!r} is not a usable class folder name (hidden, "
                        "or has a separator); rename or remove it")
    return name


def write_classes(images, wnids, names=None):
    """classes.json: [{index, wnid, name}] in sorted-wnid order, the order every loader uses."""
    names = names or {}
    wnids = sorted(wnids)
    write_json_atomic(
        os.path.join(images, "classes.json"),
        [{"index": i, "wnid": w, "name": names.get(w, w)} for i, w in enumerate(wnids)],
    )


def read_classes(images):
    """classes.json as written by write_classes; missing, truncated or malformed is one line."""
    path = os.path.join(images, "classes.json")
    if not os.path.exists(path):
        raise DataError(f"{path} is missing: run `dlwt extract` first")
    try:
        with open(path) as f:
            classes = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # a truncated or foreign file (JSONDecodeError is a ValueError)
        raise DataError(f"{path}: not a readable classes list ({e}); rerun `dlwt extract` to write it again") \
            from None
    if not isinstance(classes, list) or not classes or \
            not all(isinstance(c, dict) and isinstance(c.get("wnid"), str) for c in classes):
        raise DataError(f"{path}: expected a list of {{index, wnid, name}}; rerun `dlwt extract` to write it again")
    return classes


def scan(images, split):
    """[(relpath, label)] of one split, sorted like torchvision's ImageFolder; checks the tree's shape.

    The class list comes from train/ (val may not add classes: the model would have no output for them);
    every class folder of the split must hold at least one image.
    """
    top = os.path.join(images, split)
    if not os.path.isdir(top):
        raise DataError(f"{top} is missing: expected an ImageFolder split {split}/<class>/<image>")
    train_top = os.path.join(images, "train")
    classes = sorted(check_class_name(e.name, train_top) for e in os.scandir(train_top)
                     if e.is_dir()) if os.path.isdir(train_top) else []
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
    if not data:
        return digest, "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.convert("RGB").load()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, ValueError) for bad files
        # PIL names the in-memory buffer (with its address): say nothing of it, the caller names the file
        msg = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(e))
        return digest, f"{type(e).__name__}: {msg}"
    return digest, None


def verify(images, samples, on_corrupt="skip", num_workers=1, desc="verify"):
    """Decode every image once. Returns (good samples, [(relpath, error)], sha256 digest of the inputs).

    on_corrupt='skip' leaves bad images out and returns them (callers record and print the count);
    'fail' raises DataError naming the first one. The digest covers path, label and bytes of every good
    image, so it changes exactly when the converted dataset would.
    """
    workers = max(1, allowed_workers(num_workers))  # the CPUs this job may use, not the node's
    paths = [os.path.join(images, rel) for rel, _ in samples]
    if workers == 1:
        results = map(_check_one, paths)
    else:
        pool = Pool(workers)
        results = pool.imap(_check_one, paths, chunksize=64)
    good, bad, h = [], [], hashlib.sha256()
    try:
        for (rel, label), (md5, err) in zip(
            samples, progress(results, total=len(samples), desc=desc)
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


def check_apart(src, out):
    """Refuse a tree `src` any part of which resolves into `out` (or holds it): its top, its splits, its class
    folders and its images, followed through symlinks. The tree is read after `out` is replaced, so an
    image reached through a link into `out` would be deleted with the old output (issue 18.1: a user's
    train/ linked to data/<dataset>/images/train lost every image). Only symlinked entries need resolving: a
    plain entry lies inside its folder, which was checked. One scandir pass per folder, like scan()."""
    ours = os.path.realpath(out)

    def check(path, depth):
        real = real_path(path)
        if os.path.commonpath([real, ours]) in (real, ours):
            raise DataError(f"data.imagefolder: {path} resolves to {real}, which overlaps {out} (what extract "
                            "replaces): keep your tree and its links outside data.root/<dataset>, or use "
                            "another data.dataset")
        if depth < 3 and os.path.isdir(real):  # <src>/<split>/<class>/<image>
            walk(path, depth)

    def walk(folder, depth):
        for e in os.scandir(folder):
            if depth == 0 and e.name not in SPLITS:  # not read: a link beside train/ and val/ is the user's
                continue
            if e.is_symlink():
                check(e.path, depth + 1)
            elif depth < 2 and e.is_dir(follow_symlinks=False):
                walk(e.path, depth + 1)

    check(src, 0)


def link_tree(src, root, dataset):
    """source=imagefolder: check the user's tree, then point data/<dataset>/images/{train,val} at it.

    Symlinks, not copies: the user's tree may be large. classes.json is written beside them. A tree that
    overlaps data/<dataset>/ (where extract writes, and what a rerun replaces) is refused: replacing the
    output would delete the user's images.
    """
    if not src:
        raise DataError(
            "source=imagefolder needs data.imagefolder (or --imagefolder): a tree with train/ and val/"
        )
    src = os.path.abspath(src)
    check_apart(src, dataset_dir(root, dataset))  # before anything is removed: a rerun replaces data/<dataset>
    remove_stale_temps(dataset_dir(root, dataset))  # images.tmp-/images.old- of a killed extract
    for split in SPLITS:
        scan(src, split)  # raises on a missing split, empty class, unknown val class
    _, classes = scan(src, "train")
    with staged_dir(images_dir(root, dataset)) as tmp:
        for split in SPLITS:
            os.symlink(os.path.join(src, split), os.path.join(tmp, split))
        write_classes(tmp, classes)
    return images_dir(root, dataset)


def acquire_source(c):
    """source imagefolder (dlwt.data.sources): the user's tree must be a folder (extract checks the rest)."""
    if not c["imagefolder"] or not os.path.isdir(c["imagefolder"]):
        raise DataError(
            f"data.imagefolder={c['imagefolder']!r} is not a folder: give a tree with train/ and val/"
        )
    return {"imagefolder": c["imagefolder"]}


def extract_source(c):
    return link_tree(c["imagefolder"], c["root"], c["dataset"])
