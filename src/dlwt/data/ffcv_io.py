"""Convert an ImageFolder tree to FFCV: <root>/<dataset>/ffcv/{train,val}.beton + a .json sidecar each.

    dlwt convert --dataset imagenet --root data --max-resolution 512 --jpeg-quality 90 \
        --compress-probability 0.5 --write-mode proportion --num-workers 16

Every image is decoded once first (imagefolder.verify): a corrupt JPEG is skipped and counted, or stops
the run, as data.on_corrupt says. FFCV's writer runs supervised (ffcv_writer.Writer): a worker that dies
(full disk, OOM killer) stops the run with one line. The .beton is written under a temporary name
(atomic.staged_file) and renamed when complete; the
sidecar (counts per class, file size, sha256 of the inputs, settings) is written last, and the stale pair
removed first, so a beton is finished exactly when its sidecar exists. Both are the stage's outputs (the
Snakefile and dvc.yaml declare both), so a convert killed half-way is rerun by either runner. Temp files
of killed converts are removed at the start.
"""

import os
import sys

import numpy as np

from dlwt.atomic import os_errors, remove_stale_temps, staged_file, write_json_atomic
from dlwt.data import DataError, ffcv_dir, images_dir
from dlwt.data.imagefolder import read_classes, scan, verify
from dlwt.devices import cpus
from dlwt.devices import workers as allowed_workers


def use_safe_numba_layer():
    """Call before FFCV is first imported (its import starts numba's thread pool: Compiler.set_num_threads(1)
    in ffcv/pipeline/compiler.py). With one CPU in the affinity mask (a one-core SLURM job, `taskset -c 0`)
    numba's default layer, TBB, hangs the process at exit once it has forked (FFCV's writer forks its
    workers): gdb shows the main thread in numba/np/ufunc/tbbpool.cpp unload_tbb -> task_group::wait, for
    ever (issue 16.9; `import ffcv` + one multiprocessing.Process under `taskset -c 0` is enough; the
    workqueue and omp layers exit). One CPU runs nothing in parallel, so workqueue loses nothing there; on
    more CPUs, and when the user chose a layer (NUMBA_THREADING_LAYER), nothing changes. The environment
    variable is set too: numba re-reads it (config.reload_config) and child processes inherit it."""
    if cpus() > 1 or os.environ.get("NUMBA_THREADING_LAYER"):
        return
    os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
    if "numba" in sys.modules:  # imported but possibly not yet launched: the layer is read at launch
        sys.modules["numba"].config.THREADING_LAYER = "workqueue"


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
    max_resolution,
    jpeg_quality,
    compress_probability,
    write_mode,
    page_size,
    num_workers,
    on_corrupt,
):
    """One split of an ImageFolder -> <out_dir>/<split>.beton and <split>.beton.json. Returns the sidecar.
    The settings are params' data.* (defaults in params_schema.yaml; convert_stage passes them all)."""
    use_safe_numba_layer()
    from ffcv.fields import IntField, RGBImageField

    from dlwt.data.ffcv_writer import Writer

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
    final = os.path.join(out_dir, f"{split}.beton")
    sidecar = f"{final}.json"
    for old in (sidecar, final):  # sidecar first: a beton without one is unfinished; the old beton would
        if os.path.exists(old):   # only double the disk used while the new one is written
            os.remove(old)
    fields = {
        "image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution, jpeg_quality=jpeg_quality,
                               compress_probability=compress_probability),
        "label": IntField(),
    }
    with staged_file(final) as tmp:  # renamed to `final` when complete; removed on any error or Ctrl-C
        writer = Writer(str(tmp), fields, page_size=page_size, num_workers=workers, final=final,
                        desc=f"convert {os.path.basename(final)}")
        writer.from_indexed_dataset(_Folder(images, good), chunksize=max(1, min(100, len(good) // workers)))
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
    write_json_atomic(sidecar, info)
    return info


def convert(root, dataset, splits=("train", "val"), **kwargs):
    """<root>/<dataset>/images -> <root>/<dataset>/ffcv/{split}.beton per split; kwargs: convert_split's."""
    images = images_dir(root, dataset)
    read_classes(images)  # a clear error when extract has not run
    remove_stale_temps(ffcv_dir(root, dataset))
    with os_errors(near=ffcv_dir(root, dataset)):  # FFCV's writer names no file in its errors
        return {s: convert_split(images, ffcv_dir(root, dataset), s, **kwargs) for s in splits}
