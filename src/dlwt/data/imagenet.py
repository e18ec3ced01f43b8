"""ILSVRC2012 archives: acquire (check or download) and extract them to an ImageFolder tree.

    dlwt acquire --dataset imagenet --source imagenet --root data     # archives in data/raw/imagenet/
    dlwt acquire --dataset imagenet --root data --url train=https://... --url val=... --url devkit=...
    dlwt extract --dataset imagenet --source imagenet --root data     # -> data/imagenet/images/

The synthetic source writes archives of the same layout, so tests run this exact code.
"""

import hashlib
import os
import re
import shutil
import tarfile
import urllib.request
from contextlib import closing

import numpy as np

from dlwt.atomic import atomic_write, os_errors, publish, remove_stale_temps, staged_dir, write_json_atomic
from dlwt.data import DataError, dataset_dir, images_dir
from dlwt.data.imagefolder import write_classes
from dlwt.errors import DlwtError
from dlwt.layout import safe_name
from dlwt.progress import Progress, ReadProgress

ARCHIVES = {  # role -> (file name, md5 of the official release)
    "train": ("ILSVRC2012_img_train.tar", "1d675b47d978889d74fa0da5fadfb00e"),
    "val": ("ILSVRC2012_img_val.tar", "29b22e2961454d5413ddabcf34fc5622"),
    "devkit": ("ILSVRC2012_devkit_t12.tar.gz", "fa75699e90414af021442c21a62c3abf"),
}
# bytes of the official files (`ls -l` of the release): a download is cut off past them, so a wrong URL
# cannot fill the disk before the md5 check catches it
SIZES = {"train": 147_897_477_120, "val": 6_744_924_160, "devkit": 2_568_634}
META = "ILSVRC2012_devkit_t12/data/meta.mat"
GROUND_TRUTH = "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt"
CHUNK = 1 << 20


def md5sum(path, desc=None):
    h = hashlib.md5()
    with (
        open(path, "rb") as f,
        closing(Progress(os.path.getsize(path), desc or f"md5 {os.path.basename(path)}", unit="B")) as bar,
    ):
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def _stamp(path):
    """Record of a verified archive (size + mtime + md5): `dlwt acquire` reruns skip re-hashing 150 GB unless
    the file changed. extract does not trust it: it hashes the tars anyway while streaming them."""
    st = os.stat(path)
    return f"{path}.md5ok", f"{st.st_size} {st.st_mtime_ns}"


def _verified(path, md5):
    stamp, key = _stamp(path)
    if os.path.exists(stamp):
        with open(stamp) as f:
            if f.read().split() == [*key.split(), md5]:
                return True
    got = md5sum(path)
    if got != md5:
        raise DataError(
            f"{path}: md5 {got}, expected {md5}; the file is corrupt or not this release: "
            "delete it and download it again"
        )
    try:
        atomic_write(stamp, f"{key}\n{md5}\n")
    except (OSError, DlwtError):  # a read-only archive folder (e.g. a :ro mount): verify again next time
        pass
    return True


def download(url, dest, md5, cap=None):
    """Download url to dest: resumes dest.part with an HTTP Range request, renames only once md5 matches.
    cap: the most bytes dest may have (the official size); more and the download stops, the .part deleted."""
    part = f"{dest}.part"

    def too_big(n):
        if cap is not None and n > cap:
            if os.path.exists(part):
                os.remove(part)
            raise DataError(f"{url}: {os.path.basename(dest)} would exceed its official size of {cap} bytes "
                            f"({n} or more); check the URL (the partial file was deleted)")

    have = os.path.getsize(part) if os.path.exists(part) else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code != 416:  # 416: nothing left to fetch, the .part is complete
            raise DataError(
                f"{url}: HTTP {e.code} {e.reason}; check the URL for {os.path.basename(dest)}"
            ) from None
        resp = None
    except (urllib.error.URLError, OSError) as e:
        raise DataError(
            f"{url}: {e}; check the URL and the network, then rerun (the download resumes)"
        ) from None
    if resp is not None:
        with resp:
            # 206 = the server honoured Range: append. 200 = it sent the whole file again: start over.
            resumed = getattr(resp, "status", None) == 206
            if not resumed:
                have = 0
            length = resp.headers.get("Content-Length")
            total = have + int(length) if length else None
            too_big(total or have)
            with (
                open(part, "ab" if resumed else "wb") as f,
                closing(Progress(total, f"download {os.path.basename(dest)}", initial=have, unit="B")) as bar,
            ):
                for block in iter(lambda: resp.read(CHUNK), b""):
                    have += len(block)
                    too_big(have)  # a server that sends no (or a false) Content-Length
                    f.write(block)
                    bar.update(len(block))
    got = md5sum(part)
    if got != md5:
        os.remove(part)  # a resume cannot repair wrong bytes: the next run starts from zero
        raise DataError(
            f"{url}: downloaded {os.path.basename(dest)} has md5 {got}, expected {md5}; "
            "the partial file was deleted, check the URL and rerun"
        )
    publish(part, dest)  # the .part is the resumable download (a fixed name), not a per-writer temp
    _verified(dest, md5)


def acquire(raw_dir, urls=None, checksums=None):
    """Make sure the three archives are in raw_dir and match their md5s; download those with a URL.

    checksums: {role: md5}, default the official ILSVRC2012 ones (the synthetic source passes its own).
    Returns {role: path}.
    """
    urls = urls or {}
    unknown = set(urls) - set(ARCHIVES)
    if unknown:
        raise DataError(f"data.urls: unknown archive(s) {sorted(unknown)}; expected {sorted(ARCHIVES)}")
    os.makedirs(raw_dir, exist_ok=True)
    remove_stale_temps(raw_dir)  # temp files of a killed writer (synthetic archives); .part files resume
    out = {}
    for role, (name, md5) in ARCHIVES.items():
        md5 = (checksums or {}).get(role, md5)
        path = os.path.join(raw_dir, name)
        if not os.path.exists(path):
            if role not in urls:
                raise DataError(
                    f"{path} is missing: put {name} (ImageNet account needed) there, "
                    f"or give its download URL as data.urls.{role}"
                )
            download(urls[role], path, md5, cap=SIZES[role] if md5 == ARCHIVES[role][1] else None)
        _verified(path, md5)
        out[role] = path
    return out


def read_devkit(path):
    """(wnids by ILSVRC2012_ID, human names by wnid, train images by wnid, val labels as ILSVRC2012_IDs)."""
    from scipy.io import loadmat

    try:
        with tarfile.open(path, "r:gz") as tf:
            names = set(tf.getnames())
            for need in (META, GROUND_TRUTH):
                if need not in names:
                    raise DataError(f"{path}: {need} is missing; expected the ILSVRC2012 devkit (t12)")
            meta = loadmat(tf.extractfile(META), squeeze_me=True)["synsets"]
            truth = tf.extractfile(GROUND_TRUTH).read().decode().split()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{path}: unreadable devkit ({e}); delete it and run `dlwt acquire` again") from None
    leaves = meta[meta["num_children"] == 0]  # the 1,000 ILSVRC classes; the rest are WordNet ancestors
    for s in leaves:  # each WNID becomes a folder name: no '..', '/', or absolute path may leave the tree
        safe_name(str(s["WNID"]), f"{path}: meta.mat WNID")
    by_id = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in leaves}
    names = {str(s["WNID"]): str(s["words"]) for s in leaves}
    counts = {str(s["WNID"]): int(s["num_train_images"]) for s in leaves}
    return by_id, names, counts, [int(t) for t in truth]


class _Hashing:
    """A file read once, front to back, whose md5 is computed on the way: extract checks the archive's
    integrity in the same pass that unpacks it (no second read of 150 GB)."""

    def __init__(self, path):
        self.f, self.md5 = open(path, "rb"), hashlib.md5()

    def read(self, n=-1):
        data = self.f.read(n)
        self.md5.update(data)
        return data

    def hexdigest(self):
        while self.read(CHUNK):  # what tarfile left unread (the end-of-archive padding)
            pass
        return self.md5.hexdigest()

    def close(self):
        self.f.close()


def _bar(reader, path, desc):
    """The reader, its reads advancing a byte progress bar (works for streamed tars); closed at the end."""
    return ReadProgress(reader, os.path.getsize(path), desc)


def _check_md5(path, reader, md5):
    got = reader.hexdigest()
    if got != md5:
        raise DataError(f"{path}: md5 {got}, expected {md5}; the file is truncated or damaged (it changed since "
                        "`dlwt acquire` checked it): delete it and run `dlwt acquire` again")


def _copy_member(tf, member, dest):
    with os_errors(dest), tf.extractfile(member) as src, open(dest, "wb") as dst:  # a write error names no file
        shutil.copyfileobj(src, dst, CHUNK)


def _extract_train(path, out, wnids, counts, md5):
    """Train tar = one <wnid>.tar per class, each a flat set of JPEGs; both levels are read as streams."""
    seen = {}
    reader = _Hashing(path)
    with _bar(reader, path, "train") as f, tarfile.open(fileobj=f, mode="r|") as outer:
        for m in outer:
            if not m.isfile():
                continue
            wnid = os.path.basename(m.name)[: -len(".tar")] if m.name.endswith(".tar") else None
            if wnid not in wnids:
                raise DataError(
                    f"{path}: member {m.name!r} is not <wnid>.tar of a devkit class; "
                    "is this ILSVRC2012_img_train.tar?"
                )
            os.makedirs(os.path.join(out, wnid), exist_ok=True)
            n = 0
            with tarfile.open(fileobj=outer.extractfile(m), mode="r|") as inner:
                for jm in inner:
                    if jm.isfile():  # basename: a member name can never write outside the tree
                        _copy_member(inner, jm, os.path.join(out, wnid, os.path.basename(jm.name)))
                        n += 1
            seen[wnid] = n
        _check_md5(path, reader, md5)  # a tar cut at a member boundary reads without error: caught here
    for wnid in sorted(wnids):  # the archive is the release (md5): a count that differs is the devkit's
        if seen.get(wnid, 0) != counts[wnid]:
            raise DataError(
                f"{path}: class {wnid} has {seen.get(wnid, 0)} images, the devkit says {counts[wnid]}; "
                "the archive is intact (md5), so the devkit does not match it: use the ILSVRC2012 devkit t12"
            )


def _extract_val(path, out, by_id, truth, md5):
    """Val tar = flat ILSVRC2012_val_<n>.JPEG; image n's class is line n of the ground truth (an ID)."""
    n_seen = 0
    reader = _Hashing(path)
    with _bar(reader, path, "val") as f, tarfile.open(fileobj=f, mode="r|") as tf:
        for m in tf:
            if not m.isfile():
                continue
            name = os.path.basename(m.name)
            num = re.search(r"_(\d+)\.", name)
            n = int(num.group(1)) if num else 0
            if not 1 <= n <= len(truth) or truth[n - 1] not in by_id:
                raise DataError(
                    f"{path}: {name} has no label in the devkit's ground truth "
                    f"({len(truth)} lines); use the devkit that matches this val tar"
                )
            wnid = by_id[truth[n - 1]]
            os.makedirs(os.path.join(out, wnid), exist_ok=True)
            _copy_member(tf, m, os.path.join(out, wnid, name))
            n_seen += 1
        _check_md5(path, reader, md5)  # a truncated tar is caught here, and blamed
    if n_seen != len(truth):  # the tar is the release (md5): the ground truth is what does not match
        raise DataError(
            f"{path}: {n_seen} images (the archive is intact: md5), the devkit's ground truth lists "
            f"{len(truth)}; the devkit does not match this val tar: use the ILSVRC2012 devkit t12"
        )


def expected_md5(raw_dir, checksums=None):
    """{role: md5}: `checksums`, else the MD5SUMS.json that the synthetic source writes beside its archives,
    else the official ILSVRC2012 ones."""
    if checksums is None and os.path.exists(os.path.join(raw_dir, "MD5SUMS.json")):
        import json

        with open(os.path.join(raw_dir, "MD5SUMS.json")) as f:
            checksums = json.load(f)
    return {role: (checksums or {}).get(role, md5) for role, (_, md5) in ARCHIVES.items()}


def extract(raw_dir, root, dataset, checksums=None):
    """Archives in raw_dir -> <root>/<dataset>/images/{train,val}/<wnid>/*.JPEG + classes.json.

    Streams the tars (no copy of the archive) and checks their md5 on the way (the acquire stamp is not
    trusted: a file may have changed since). Writes into images.tmp-<pid>-<host> and renames it into place
    only when both splits are complete and intact, so a failed or killed run leaves nothing that looks
    finished; the temp trees of killed runs are removed first.
    """
    paths = {role: os.path.join(raw_dir, name) for role, (name, _) in ARCHIVES.items()}
    for p in paths.values():
        if not os.path.exists(p):
            raise DataError(f"{p} is missing: run `dlwt acquire` first")
    md5 = expected_md5(raw_dir, checksums)
    got = md5sum(paths["devkit"])
    if got != md5["devkit"]:
        raise DataError(f"{paths['devkit']}: md5 {got}, expected {md5['devkit']}; the file is truncated or "
                        "damaged (it changed since `dlwt acquire` checked it): delete it and run `dlwt acquire` again")
    by_id, names, counts, truth = read_devkit(paths["devkit"])
    out = images_dir(root, dataset)
    remove_stale_temps(dataset_dir(root, dataset))
    with staged_dir(out) as tmp:
        for role, fn, args in [
            ("train", _extract_train, (set(names), counts)),
            ("val", _extract_val, (by_id, truth)),
        ]:
            try:
                fn(paths[role], os.path.join(tmp, role), *args, md5[role])
            except (tarfile.TarError, EOFError) as e:
                raise DataError(
                    f"{paths[role]}: unreadable tar ({e}); it is truncated or corrupt: delete "
                    "it and run `dlwt acquire`"
                ) from None
        write_classes(tmp, names.keys(), names)
        write_json_atomic(
            os.path.join(tmp, "extract.json"),
            {
                "source_archives": {r: os.path.basename(p) for r, p in paths.items()},
                "archives_md5": md5,
                "train_images": int(sum(counts.values())),
                "val_images": len(truth),
                "classes": len(names),
                "val_per_class": {
                    w: int(c) for w, c in zip(*np.unique([by_id[t] for t in truth], return_counts=True))
                },
            },
        )
    return out


def acquire_source(c):
    """source imagenet (dlwt.data.sources): the three archives in data.raw_dir, md5-checked (or downloaded)."""
    return acquire(c["raw_dir"], urls=c["urls"])


def extract_source(c):
    """source imagenet: the official md5s only (an MD5SUMS.json beside real archives is not trusted)."""
    return extract(c["raw_dir"], c["root"], c["dataset"], checksums={})
