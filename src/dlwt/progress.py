"""Progress that reads well in a terminal and in a batch log: tqdm on a terminal; on a file (SLURM, Snakemake
logs) one plain line every `every_percent` of the work or `every_seconds`, never carriage-return frames.

    for item in progress(items, total=len(items), desc="extract val"): ...       # data stages
    reader = ReadProgress(open(path, "rb"), os.path.getsize(path), "md5 train.tar")  # bytes read, as it goes
    bar = Progress(total=5004, desc="resnet18-wm-s0 epoch 3/90"); bar.update(100, loss=4.1, ips=2300); bar.close()
"""
from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}h{rest // 60:02d}m" if h else f"{rest // 60}m{rest % 60:02d}s"


class Progress:
    """A counter over `total` steps; `update(n, **fields)` reports progress (callers call it at their sync
    points only: reading a loss costs a device sync)."""

    def __init__(self, total: int | None, desc: str, *, initial: int = 0, every_percent: float = 5.0,
                 every_seconds: float = 60.0, enabled: bool = True, stream=None, unit: str = ""):
        self.total, self.desc, self.n, self.enabled, self.unit = total, desc, initial, enabled, unit
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_n = max(1, int(total * every_percent / 100)) if total else None  # unknown total: by time
        self.every_s, self.start, self.start_n = every_seconds, time.monotonic(), initial
        self.last_n, self.last_t = initial, self.start
        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, file=self.stream, unit=unit or "it",
                        unit_scale=unit == "B") if enabled and self.tty else None

    def update(self, n: int = 1, **fields) -> None:
        self.n += n
        if not self.enabled:
            return
        text = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        if self.bar is not None:
            self.bar.update(n)
            if text:
                self.bar.set_postfix_str(text, refresh=False)
            return
        now = time.monotonic()
        due = (self.every_n and self.n - self.last_n >= self.every_n) or now - self.last_t >= self.every_s
        if not due and not (self.total and self.n >= self.total):
            return
        rate = (self.n - self.start_n) / max(now - self.start, 1e-9)
        size = _bytes if self.unit == "B" else str
        done = f"{size(self.n)}/{size(self.total)} ({100.0 * self.n / max(self.total, 1):.0f}%)" if self.total \
            else size(self.n)
        eta = f", eta {_duration((self.total - self.n) / rate)}" if self.total and rate > 0 else ""
        speed = f"{_bytes(rate)}/s" if self.unit == "B" else f"{rate:.3g} it/s"
        print(f"{self.desc}: {done}" + (f", {text}" if text else "") + f", {speed}{eta}", file=self.stream,
              flush=True)
        self.last_n, self.last_t = self.n, now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000


class ReadProgress:
    """A file-like reader whose read() calls advance a byte Progress (tarfile streams read through it)."""

    def __init__(self, reader, total: int | None, desc: str):
        self.reader, self.bar = reader, Progress(total, desc, unit="B")

    def read(self, *args):
        data = self.reader.read(*args)
        self.bar.update(len(data))
        return data

    def close(self):
        self.bar.close()
        return self.reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getattr__(self, name):
        return getattr(self.reader, name)


def progress(iterable, total: int | None = None, desc: str = "", **kw):
    """Iterate `iterable`, reporting through a Progress (a line per few percent when not on a terminal)."""
    total = len(iterable) if total is None else total
    p = Progress(total, desc, **kw)
    try:
        for item in iterable:
            yield item
            p.update(1)
    finally:
        p.close()
