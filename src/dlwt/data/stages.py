"""The data stages of the `dlwt` CLI: acquire, extract, convert. Handlers only turn params + flags into a
data cfg; the work is in acquire_stage / extract_stage / convert_stage (which take params['data']).

    dlwt acquire --params params.yaml --overlay config/ci.yaml          # what the Snakefile and dvc.yaml run
    dlwt acquire --dataset synthetic --source synthetic --root data  # or --source imagenet
    dlwt extract --dataset synthetic --source synthetic --root data
    dlwt convert --dataset synthetic --root data --max-resolution 64 --page-size 2097152 --num-workers 1
    dlwt extract --dataset digits --source digits --root data && dlwt convert --dataset digits --root data
"""

from dlwt.atomic import check_inside, os_errors, write_json_atomic
from dlwt.data import DataError, acquired_path, dataset_dir, real_path, source
from dlwt.data.config import resolve as _resolve_cfg
from dlwt.params import choices


def resolve(cfg=None):
    """The data cfg with defaults (config.resolve), its names checked before they become paths."""
    c = _resolve_cfg(cfg)
    # data.dataset: one plain folder name, and data/<dataset> (followed through symlinks) inside data.root,
    # since the stages write and replace folders there
    real_path(dataset_dir(c["root"], c["dataset"]))  # a loop there is one line (check_inside would raise)
    check_inside(dataset_dir(c["root"], c["dataset"]), c["root"], "data.dataset")
    return c

# the data settings convert_stage passes to ffcv_io.convert (each also a `dlwt convert` flag)
CONVERT_KEYS = ("max_resolution", "jpeg_quality", "compress_probability", "write_mode", "page_size",
                "num_workers", "on_corrupt")


def acquire_stage(cfg):
    """acquire, then record what it found in <root>/<dataset>/acquired.json: the stage's output in the DAG."""
    c = resolve(cfg)
    found = source(c["source"]).acquire(c)  # imagenet: verify or download; synthetic: write; others: check
    write_json_atomic(acquired_path(c["root"], c["dataset"]),
                      {"source": c["source"], "dataset": c["dataset"], "files": {k: str(v) for k, v in found.items()}})
    return found


def extract_stage(cfg):
    """Archives or source -> <root>/<dataset>/images/{train,val}/<class>/ + classes.json; returns the path."""
    c = resolve(cfg)
    return source(c["source"]).extract(c)


def convert_stage(cfg, splits=("train", "val")):
    """<root>/<dataset>/images -> <root>/<dataset>/ffcv/{split}.beton (+ .json). Returns the sidecars."""
    from dlwt.data.ffcv_io import convert

    c = resolve(cfg)
    return convert(c["root"], c["dataset"], splits=splits, **{k: c[k] for k in CONVERT_KEYS})


def _plain(stage):
    """The CLI handler of a stage: a full disk, a read-only folder or a symlink loop is one line."""
    def run(args):
        with os_errors():
            return stage(args)
    return run


def _common(p):
    p.add_argument("--params", help="params.yaml: its data section is the starting point (flags override it)")
    p.add_argument("--overlay", action="append", default=[], help="YAML deep-merged over --params (repeatable)")
    p.add_argument("--dataset", help="folder name under --root (default: the source's name)")
    p.add_argument("--source", choices=choices("data.source"))
    p.add_argument("--root", help="data root (default: data)")
    p.add_argument("--raw-dir", dest="raw_dir", help="archives folder (default: <root>/raw/<dataset>)")


def _cfg(args):
    """params['data'] (with --params) updated by the flags given on the command line; what neither sets
    keeps DATA_DEFAULTS."""
    base = {}
    if args.params:
        from dlwt.params import load

        base = load(args.params, args.overlay)["data"]
    cfg = {
        k: v
        for k, v in vars(args).items()
        if v is not None
        and k
        in ("dataset", "source", "root", "raw_dir", "imagefolder", *CONVERT_KEYS)
    }
    if "dataset" not in cfg and "source" in cfg and not base:
        cfg["dataset"] = cfg["source"]
    if getattr(args, "url", None):
        bad = [u for u in args.url if "=" not in u]
        if bad:
            raise DataError(f"--url {bad[0]!r}: expected ROLE=URL with ROLE train, val or devkit")
        cfg["urls"] = dict(u.split("=", 1) for u in args.url)
    for src in ("synthetic", "digits"):
        sub = {k: getattr(args, k) for k in resolve()[src] if getattr(args, k, None) is not None}
        if sub and cfg.get("source", base.get("source")) == src:
            cfg[src] = {**base.get(src, {}), **sub}
    return {**base, **cfg}


def add_subparsers(subparsers):
    """Register acquire, extract and convert on the CLI's subparsers (argparse)."""
    p = subparsers.add_parser(
        "acquire", help="check or download the ILSVRC2012 archives (or write synthetic ones)"
    )
    _common(p)
    p.add_argument("--url", action="append", metavar="ROLE=URL", help="download link (train, val, devkit)")
    p.add_argument("--imagefolder", help="source=imagefolder: tree with train/ and val/")
    p.add_argument("--classes", type=int, help="synthetic: number of classes")
    p.add_argument("--train-per-class", dest="train_per_class", type=int)
    p.add_argument("--val-per-class", dest="val_per_class", type=int)
    p.add_argument("--size", type=int, help="synthetic/digits: image side in pixels")
    p.add_argument("--seed", type=int)
    p.set_defaults(func=_plain(lambda a: acquire_stage(_cfg(a))))

    p = subparsers.add_parser("extract", help="archives -> data/<dataset>/images/{train,val}/<class>/")
    _common(p)
    p.add_argument("--imagefolder", help="source=imagefolder: tree with train/ and val/")
    p.add_argument("--size", type=int, help="digits: image side in pixels")
    p.add_argument("--seed", type=int, help="digits: split seed")
    p.add_argument("--format", choices=choices("data.digits.format"), help="digits: image format")
    p.set_defaults(func=_plain(lambda a: extract_stage(_cfg(a))))

    p = subparsers.add_parser("convert", help="ImageFolder -> data/<dataset>/ffcv/{train,val}.beton")
    _common(p)
    p.add_argument("--split", action="append", choices=["train", "val"], help="default: both")
    p.add_argument("--max-resolution", dest="max_resolution", type=int)
    p.add_argument("--jpeg-quality", dest="jpeg_quality", type=int)
    p.add_argument("--compress-probability", dest="compress_probability", type=float)
    p.add_argument("--write-mode", dest="write_mode", choices=choices("data.write_mode"))
    p.add_argument("--page-size", dest="page_size", type=int)
    p.add_argument("--num-workers", dest="num_workers", type=int)
    p.add_argument("--on-corrupt", dest="on_corrupt", choices=choices("data.on_corrupt"))
    p.set_defaults(func=_plain(lambda a: convert_stage(_cfg(a), splits=tuple(a.split or ("train", "val")))))
    return subparsers
