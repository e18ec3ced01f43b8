"""The one writer: every file and folder dlwt writes goes through here.

    from dlwt.atomic import atomic_write, write_json_atomic, save_torch, staged_dir, remove_stale_temps
    write_json_atomic("results/x/eval/r.json", {"top1": 0.7})
    save_torch(state, run.last)
    with staged_dir("data/imagenet/images") as tmp: ...   # build in images.tmp-<pid>-<host>, renamed at exit

A reader, a rerun, DVC or Snakemake never sees half a file under its final name: everything is written
under a temp name beside the target (`.NAME.tmp-<pid>-<host>` for files, `NAME.tmp-<pid>-<host>` for
folders), flushed to disk, then renamed. The pid and host in the name let the next run (remove_stale_temps)
tell a dead writer's leftovers (tens of GB on ImageNet) from a live writer's: the host because on a cluster
the folder may be shared between nodes, whose pids mean nothing here.

OSErrors that are the user's to fix (disk full, read-only folder, symlink loop) become one-line DlwtErrors
(`plain_oserror`, or the `os_errors()` context) instead of tracebacks.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import stat
from contextlib import contextmanager
from pathlib import Path

from dlwt.errors import DlwtError

_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname().split(".")[0]) or "host"
# NAME.tmp-PID-HOST (HOST optional: older temp names had none); NAME.old-PID-HOST for a replaced folder
_TEMP = re.compile(r"^(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)(?:-(?P<host>[A-Za-z0-9_]+))?$")


def tag() -> str:
    """This writer's suffix: <pid>-<host>."""
    return f"{os.getpid()}-{_HOST}"


def temp_path(path, kind: str = "tmp") -> Path:
    """The temp name beside `path`: hidden for files (globs like *.json must not pick it up)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{kind}-{tag()}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable (a power cut after it must not bring the old name back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def plain_oserror(e: OSError, path=None, near=None) -> OSError | DlwtError:
    """A DlwtError with one plain line for the OSErrors a user fixes (full disk, read-only, symlink loop);
    any other OSError is returned unchanged (a bug or a state we did not foresee: keep its traceback).
    Names `path`, else the file the OS names, else `near` (a folder the failing write was in)."""
    where = path or e.filename or (f"in {near}" if near else "(a file the OS did not name)")
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "disk full" if e.errno == errno.ENOSPC else "disk quota exceeded"
        return DlwtError(f"{what} writing {where}: free space there (df -h), then rerun the same command "
                         "(finished files are kept)")
    if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return DlwtError(f"read-only / not writable: {where}: make it writable or choose another output "
                         "folder")
    if e.errno == errno.ELOOP:
        return DlwtError(f"symlink loop at {where}: fix or remove that link")
    if e.errno == errno.ENAMETOOLONG:
        return DlwtError(f"name too long: {str(where)[:80]}...: shorten it (exp, data.dataset or the --out path)")
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and path is not None:
        return DlwtError(f"{where}: a part of this path is a file, not a folder: move that file or choose "
                         "another path")
    return e


@contextmanager
def os_errors(path=None, near=None):
    """Turn the OSErrors a user can fix, raised inside the block, into one-line DlwtErrors naming `path`
    (default: the file the OS names, else the folder `near`)."""
    try:
        yield
    except OSError as e:
        mapped = plain_oserror(e, path, near)
        if mapped is e:
            raise
        raise mapped from None


_KINDS = ((stat.S_ISDIR, "folder"), (stat.S_ISREG, "file"), (stat.S_ISLNK, "symlink"), (stat.S_ISCHR, "character device"),
          (stat.S_ISBLK, "block device"), (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"))


def _kind(path) -> str | None:
    """What is at `path` now ("file", "folder", "fifo", ...; a symlink is itself, not what it points to), or None."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as e:
        raise plain_oserror(e, path) from None
    return next((name for test, name in _KINDS if test(mode)), "special file")


def check_target(path, want: str = "file", what: str | None = None) -> Path:
    """`path` as a Path if a writer may put a `want` ("file" or "folder") there: nothing is there yet, a
    `want` is (it is replaced), or a symlink (replaced, never followed); else DlwtError. Every writer below
    calls it, so `--out /dev/null` or a fifo is refused instead of being replaced by a regular file (as root,
    the real /dev/null); the stages call it again on their --out before any work. `what` names the flag."""
    label = f"{what}: " if what else ""
    if str(path) == "":
        raise DlwtError(f"{label}empty path: pass the {want} to write, e.g. results/<exp>/...")
    kind = _kind(path)
    if kind not in (None, want, "symlink"):
        raise DlwtError(f"{label}{path} exists and is a {kind}, not a {want}: pass a path that does not exist "
                        f"yet (or is a {want} to replace)")
    return Path(path)


def _write_via(path, write) -> None:
    """write(f) into the temp file beside path, fsync, rename; the temp file never outlives a failure."""
    path = check_target(path, "file")
    tmp = temp_path(path)
    with os_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(path.parent)


def atomic_write(path, data: str | bytes) -> None:
    """Write text or bytes to `path` atomically."""
    _write_via(path, lambda f: f.write(data.encode() if isinstance(data, str) else data))


def write_json_atomic(path, obj, indent: int = 2) -> None:
    atomic_write(path, json.dumps(obj, indent=indent) + "\n")


def save_torch(obj, path) -> None:
    """torch.save atomically (checkpoints): a kill mid-write leaves the previous file intact."""
    import torch

    _write_via(path, lambda f: torch.save(obj, f))


def _remove(path: Path) -> None:
    """Remove a file, a symlink (never what it points to) or a folder tree."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def replace_dir(tmp, final) -> None:
    """Move the finished folder `tmp` to `final`; an older `final` is removed only once the new one is in
    place (a symlink at `final` is unlinked, never followed; a file or device there is refused)."""
    tmp, final = Path(tmp), check_target(final, "folder")
    with os_errors(final):
        if os.path.lexists(final):
            old = final.with_name(f"{final.name}.old-{tag()}")
            os.replace(final, old)
            os.replace(tmp, final)
            _remove(old)
        else:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, final)
        _fsync_dir(final.parent)


@contextmanager
def staged_dir(final):
    """Build a folder under NAME.tmp-<pid>-<host> and rename it to `final` when the block ends without
    error; on any error (or a kill signal turned into an exception) the temp folder is removed."""
    final = check_target(final, "folder")  # before the work, not after it
    tmp = final.with_name(f"{final.name}.tmp-{tag()}")
    with os_errors(final):
        if os.path.lexists(tmp):
            _remove(tmp)
        tmp.mkdir(parents=True)
    try:
        yield tmp
        replace_dir(tmp, final)
    finally:
        if os.path.lexists(tmp):
            _remove(tmp)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(folder) -> list[Path]:
    """Delete the temp files and folders in `folder` (not below it) left by dead writers on this host;
    returns what was removed. Call it at a stage's start, on the folders the stage writes into."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    gone = []
    for entry in folder.iterdir():
        m = _TEMP.match(entry.name)
        if not m or (m["host"] and m["host"] != _HOST) or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        try:
            _remove(entry)
        except OSError:  # best effort: a read-only archive folder (a :ro mount) keeps its leftovers
            continue
        gone.append(entry)
    return gone


def check_inside(path, root, what: str) -> Path:
    """`path` resolved, if it lies inside `root` (resolved; symlinks followed); else DlwtError. Call it
    before writing or removing anything at `path`."""
    p, r = Path(path).resolve(), Path(root).resolve()
    if p != r and r not in p.parents:
        raise DlwtError(f"{what}: {path} resolves to {p}, outside {r}; refusing to write or remove there: "
                        "make it a real folder inside, or move the whole root")
    return p


def publish(tmp, final) -> None:
    """Rename the finished file `tmp` (written by someone else: FFCV's writer, a resumable download) to
    `final`, durably: its bytes flushed first, then the rename, then the folder. The counterpart of
    replace_dir for files that dlwt does not write itself through atomic_write."""
    with os_errors(final):
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
        _fsync_dir(Path(final).parent)


@contextmanager
def staged_file(final):
    """Yield the temp path beside `final` for a writer that wants a file name (FFCV's DatasetWriter, tarfile);
    publish it as `final` when the block ends without error; on any error the temp file is removed."""
    tmp = temp_path(final)
    with os_errors(final):
        Path(final).parent.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        publish(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
