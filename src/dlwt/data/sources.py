"""The data sources: one entry per value of `data.source`, the one list the stages, the DAG, the report and
doctor read (issue 17.4). A new source is its module (with `acquire_source(c)` and `extract_source(c)`,
taking the resolved data cfg) plus one line here and its value in params_schema.yaml's data.source enum
(tests/test_data_sources_registry.py checks the two lists agree and every module has both hooks).

    from dlwt.data import source, source_names
    source("cifar10").acquire_keys        # ('data.cifar',): the params acquire reads for it (the DAG's deps)
    source("synthetic").classes({"synthetic": {"classes": 3}})   # 3
    source(cfg["source"]).extract(cfg)    # what `dlwt extract` runs

Declarations only at import: a source's module (and whatever it imports) loads when a hook is called.
"""
from dataclasses import dataclass
from importlib import import_module


@dataclass(frozen=True)
class Source:
    name: str  # the data.source value
    module: str  # dlwt.data.<module>: defines acquire_source(c) and extract_source(c)
    acquire_keys: tuple  # params keys `dlwt acquire` reads for this source, besides data.source/root/dataset
    extract_keys: tuple  # the same for `dlwt extract`
    n_classes: int | str | None  # fixed; or "section.key" of params' data holding it; None: the tree's classes.json
    archives: bool = False  # the ILSVRC2012 archives must be in data.raw_dir (the DAG's preflight checks them)

    def hooks(self):
        return import_module(f"dlwt.data.{self.module}")

    def acquire(self, c):
        """Check (or fetch, or write) what extract needs; returns {role: path} for acquired.json."""
        return self.hooks().acquire_source(c)

    def extract(self, c):
        """Write <root>/<dataset>/images/{train,val}/<class>/ + classes.json; returns the images folder."""
        return self.hooks().extract_source(c)

    def classes(self, data):
        """Number of classes for params' `data` section, or None when only the extracted tree knows."""
        if isinstance(self.n_classes, str):
            section, key = self.n_classes.split(".")
            return (data.get(section) or {}).get(key)
        return self.n_classes


SOURCES = {s.name: s for s in (
    Source("imagenet", "imagenet", ("data.raw_dir", "data.urls"), (), 1000, archives=True),
    Source("synthetic", "synthetic", ("data.raw_dir", "data.synthetic"), (), "synthetic.classes"),
    Source("imagefolder", "imagefolder", ("data.imagefolder",), ("data.imagefolder",), None),
    Source("digits", "digits", (), ("data.digits",), 10),
    Source("fashion-mnist", "fashion_mnist", ("data.fashion_mnist",), ("data.fashion_mnist",), 10),
    Source("cifar10", "cifar", ("data.cifar",), ("data.cifar",), 10),
    Source("cifar100", "cifar", ("data.cifar",), ("data.cifar",), 100),
)}
