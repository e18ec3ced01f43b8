"""Convert an ImageFolder tree to FFCV: <root>/<dataset>/ffcv/{train,val}.beton + a .json sidecar each.

    dlwt convert --dataset imagenet --root data --max-resolution 512 --jpeg-quality 90 \
        --compress-probability 0.5 --write-mode proportion --num-workers 16

Every image is decoded once first (imagefolder.verify): a corrupt JPEG is skipped and counted, or stops
the run, as data.on_corrupt says. (It must not reach FFCV's writer: a worker that raises there leaves the
parent waiting forever.) The .beton is written under a temporary name and renamed when complete; the
sidecar (counts per class, file size, sha256 of the inputs, settings) is written last, and the stale pair
removed first, so a beton is finished exactly when its sidecar exists. Both are the stage's outputs (the
Snakefile and dvc.yaml declare both), so a convert killed half-way is rerun by either runner. Temp files
of killed converts are removed at the start.
"""

import os
import sys

import numpy as np

from dlwt.atomic import os_errors, remove_stale_temps, temp_path
from dlwt.data import DataError, ffcv_dir, images_dir
from dlwt.data.imagefolder import read_classes, scan, verify, write_json
from dlwt.devices import workers as allowed_workers
from dlwt.progress import Progress


class _Folder:
    """Indexable (HxWx3 uint8 image, label) over verified samples, for DatasetWriter.from_indexed_dataset."""

    def __init__(self, images, samples):
        self.images, self.samples = images, samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        from PIL import Image

        rel, label = self.samples[i]
        with Image.open(os.path.join(self.images, rel)) as im:
            return np.asarray(im.convert("RGB")), label


def convert_split(
    images,
    out_dir,
    split,
    *,
    max_resolution=512,
    jpeg_quality=90,
    compress_probability=0.5,
    write_mode="proportion",
    page_size=1 << 23,
    num_workers=8,
    on_corrupt="skip",
):
    """One split of an ImageFolder -> <out_dir>/<split>.beton and <split>.beton.json. Returns the sidecar."""
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    workers = max(1, allowed_workers(num_workers))  # numba (FFCV) refuses more threads than the affinity mask
    classes = [c["wnid"] for c in read_classes(images)]
    samples, folders = scan(images, split)
    if folders != classes:
        raise DataError(
            f"{os.path.join(images, 'train')}: class folders differ from classes.json; rerun `dlwt extract`"
        )
    good, bad, digest = verify(
        images, samples, on_corrupt=on_corrupt, num_workers=workers, desc=f"verify {split}"
    )
    if bad:  # never silent: the count and the first file on stderr, every file in the sidecar
        print(
            f"dlwt convert: skipped {len(bad)} corrupt image(s) in {split} (data.on_corrupt=skip), "
            f"first {os.path.join(images, bad[0][0])}; all listed in {split}.beton.json",
            file=sys.stderr,
        )
    if not good:
        raise DataError(f"{os.path.join(images, split)}: no decodable image; the tree is corrupt")
    os.makedirs(out_dir, exist_ok=True)
    final = os.path.join(out_dir, f"{split}.beton")
    sidecar = f"{final}.json"
    for old in (sidecar, final):  # sidecar first: a beton without one is unfinished; the old beton would
        if os.path.exists(old):   # only double the disk used while the new one is written
            os.remove(old)
    tmp = str(temp_path(final))
    try:
        writer = DatasetWriter(
            tmp,
            {
                "image": RGBImageField(
                    write_mode=write_mode,
                    max_resolution=max_resolution,
                    jpeg_quality=jpeg_quality,
                    compress_probability=compress_probability,
                ),
                "label": IntField(),
            },
            page_size=page_size,
            num_workers=workers,
        )
        # FFCV's writer shows its progress with tqdm(total=...).update()/.close() (ffcv/writer.py, _worker_loop's
        # caller): a Progress instead prints plain lines in batch logs and is tqdm itself on a terminal
        import ffcv.writer

        ffcv.writer.tqdm = lambda total: Progress(total, f"convert {os.path.basename(final)}")
        writer.from_indexed_dataset(_Folder(images, good), chunksize=max(1, min(100, len(good) // workers)))
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):  # interrupted (Ctrl-C, error): no partial file left behind
            os.remove(tmp)
    per_class = np.bincount([label for _, label in good], minlength=len(classes))
    info = {
        "split": split,
        "file": os.path.basename(final),
        "bytes": os.path.getsize(final),
        "images": len(good),
        "classes": len(classes),
        "per_class": {c: int(n) for c, n in zip(classes, per_class)},
        "skipped_corrupt": [{"file": rel, "error": err} for rel, err in bad],
        "inputs_sha256": digest,
        "settings": {
            "max_resolution": max_resolution,
            "jpeg_quality": jpeg_quality,
            "write_mode": write_mode,
            "compress_probability": compress_probability,
            "page_size": page_size,
        },
    }
    write_json(sidecar, info)
    return info


def convert(root, dataset, splits=("train", "val"), **kwargs):
    """<root>/<dataset>/images -> <root>/<dataset>/ffcv/{split}.beton per split; kwargs: convert_split's."""
    images = images_dir(root, dataset)
    read_classes(images)  # a clear error when extract has not run
    remove_stale_temps(ffcv_dir(root, dataset))
    with os_errors(near=ffcv_dir(root, dataset)):  # FFCV's writer names no file in its errors
        return {s: convert_split(images, ffcv_dir(root, dataset), s, **kwargs) for s in splits}
