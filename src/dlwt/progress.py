"""Progress that reads well in a terminal and in a batch log: tqdm on a terminal; on a file (SLURM, Snakemake
logs) one plain line every `every_percent` of the work or `every_seconds`, never carriage-return frames.

    for item in progress(items, total=len(items), desc="extract val"): ...       # data stages
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

    def __init__(self, total: int, desc: str, *, initial: int = 0, every_percent: float = 5.0,
                 every_seconds: float = 60.0, enabled: bool = True, stream=None):
        self.total, self.desc, self.n, self.enabled = total, desc, initial, enabled
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.every_n = max(1, int(total * every_percent / 100))
        self.every_s, self.start, self.start_n = every_seconds, time.monotonic(), initial
        self.last_n, self.last_t = initial, self.start
        self.bar = tqdm(total=total, initial=initial, desc=desc, leave=False, file=self.stream) \
            if enabled and self.tty else None

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
        if self.n - self.last_n < self.every_n and now - self.last_t < self.every_s and self.n < self.total:
            return
        rate = (self.n - self.start_n) / max(now - self.start, 1e-9)
        eta = (self.total - self.n) / rate if rate > 0 else 0.0
        pct = 100.0 * self.n / max(self.total, 1)
        print(f"{self.desc}: {self.n}/{self.total} ({pct:.0f}%)" + (f", {text}" if text else "")
              + f", {rate:.3g} it/s, eta {_duration(eta)}", file=self.stream, flush=True)
        self.last_n, self.last_t = self.n, now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
