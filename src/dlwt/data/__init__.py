"""Data stage: ILSVRC2012 archives (or synthetic / digits / a user ImageFolder) -> ImageFolder -> FFCV.

    dlwt acquire --dataset imagenet --source imagenet --root data   # verify (or download) the archives
    dlwt extract --dataset imagenet --source imagenet --root data   # -> data/imagenet/images/{train,val}/
    dlwt convert --dataset imagenet --root data                     # -> data/imagenet/ffcv/{train,val}.beton

    from dlwt.data.loaders import make_loader
    for images, labels in make_loader("train", cfg, device, distributed=False): ...

    from dlwt.data import source, source_names   # the registry of data sources (dlwt.data.sources)
    source(params["data"]["source"]).acquire_keys  # the params its acquire reads; .classes(params["data"])

FFCV is imported only by ffcv_io.py, ffcv_writer.py and the FFCV branch of loaders.py, so everything else
works without it.
"""


from dlwt.errors import DlwtError


class DataError(DlwtError):
    """Bad input to the data stage. The message is one line naming the file and the fix; the CLI prints it."""


def dataset_dir(root, dataset):
    """data/<dataset>: everything the data stages write for one dataset (data.dataset must be a plain name,
    so nothing lands outside data.root)."""
    import os

    from dlwt.layout import safe_name

    return os.path.join(root, safe_name(dataset, "data.dataset"))


def acquired_path(root, dataset):
    """data/<dataset>/acquired.json: what acquire found (the acquire stage's output in the DAG)."""
    import os

    return os.path.join(dataset_dir(root, dataset), "acquired.json")


def images_dir(root, dataset):
    """data/<dataset>/images: the ImageFolder tree ({train,val}/<class>/*) and classes.json."""
    import os

    return os.path.join(dataset_dir(root, dataset), "images")


def ffcv_dir(root, dataset):
    """data/<dataset>/ffcv: {train,val}.beton and their .json sidecars."""
    import os

    return os.path.join(dataset_dir(root, dataset), "ffcv")


def real_path(path):
    """`path` with every symlink resolved; a symlink loop on the way is one line naming it (os.path.realpath
    returns a loop unresolved, and pathlib's resolve raises RuntimeError)."""
    import errno
    import os

    try:
        os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise DataError(f"symlink loop at {path}: fix or remove that link") from None
    return os.path.realpath(path)


def source(name):
    """The registry entry of data.source `name` (dlwt.data.sources.Source: its hooks, the params keys its
    acquire/extract read, its class count); DataError for a name that is not one."""
    from dlwt.data.sources import SOURCES

    if name not in SOURCES:
        raise DataError(f"data.source={name!r}; expected one of {sorted(SOURCES)}")
    return SOURCES[name]


def source_names():
    """Every data.source value, in the registry's order."""
    from dlwt.data.sources import SOURCES

    return tuple(SOURCES)
