"""FFCV's DatasetWriter, supervised: a worker that dies stops the conversion with one line instead of a hang.

    from dlwt.data.ffcv_writer import Writer
    Writer(tmp, fields, page_size=1 << 23, num_workers=8, desc="convert train.beton").from_indexed_dataset(ds)

FFCV's own `_write_common` (ffcv/writer.py, ffcv 1.0.2) waits in `while previous != self.num_samples` for a
shared counter and then in `allocations_queue.get()`, neither with a timeout, and never looks at its worker
processes: a worker that dies (ENOSPC when the disk fills, the OOM killer, a bad image) leaves the parent
waiting forever, and the other workers spin in MemoryAllocator.flush_page for the dead one's page. This
`_write_common` is FFCV's, step for step (same queues, counter, allocator, finalize), plus: each worker runs
under `_guarded`, which sends its error (errno, text) to the parent and exits 1 without a traceback; the
parent checks its workers every 0.1 s while it waits, and on the first failure terminates the rest, frees
the shared memory and raises a DataError (a full disk: the plain_oserror line naming the file and its disk).
The caller (ffcv_io, through atomic.staged_file) removes the half-written temp file.
"""

import ctypes
import os
import queue
import signal
from multiprocessing import Process, Queue, Value
from time import sleep

from ffcv.memory_allocator import MemoryAllocator
from ffcv.writer import DatasetWriter

from dlwt.atomic import plain_oserror
from dlwt.data import DataError
from dlwt.progress import Progress

POLL_S = 0.1  # FFCV's own polling interval


def _guarded(work_fn, errors, *args):
    """A writer worker (FFCV's work_fn) whose failure reaches the parent as (errno or None, text)."""
    try:
        work_fn(*args)
    except BaseException as e:  # noqa: BLE001 (the parent decides what it means; KeyboardInterrupt included)
        errors.put((getattr(e, "errno", None), f"{type(e).__name__}: {e}"))
        # SystemExit: multiprocessing's _bootstrap exits 1 quietly and flushes `errors` to the pipe first
        raise SystemExit(1) from None


def _mount(path):
    """The mount point holding `path` (the disk a full-disk message names)."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


class Writer(DatasetWriter):
    """DatasetWriter whose parent notices dead workers; `desc` labels the progress lines."""

    def __init__(self, fname, fields, *, page_size, num_workers, desc, final=None):
        super().__init__(fname, fields, page_size=page_size, num_workers=num_workers)
        self.desc, self.final = desc, final or fname

    def _failed(self, processes, errors):
        """Raise DataError if a worker died; None while all are alive or finished cleanly."""
        dead = [p for p in processes if p.exitcode not in (None, 0)]
        if not dead:
            return
        try:  # the worker flushed its report before exiting; allow the pipe a moment
            code, text = errors.get(timeout=1.0)
        except queue.Empty:
            code, text = None, None
        if code is not None:
            where = f"{self.final} (disk mounted at {_mount(os.path.dirname(os.path.abspath(self.fname)))})"
            err = OSError(code, os.strerror(code))
            mapped = plain_oserror(err, path=where)
            if mapped is not err:  # full disk, quota, read-only: the user's to fix, in atomic's words
                raise mapped
        p = dead[0]
        if text is None and p.exitcode < 0:
            name = signal.Signals(-p.exitcode).name
            hint = " (SIGKILL is usually the out-of-memory killer: lower data.num_workers)" \
                if p.exitcode == -signal.SIGKILL else ""
            text = f"killed by {name}{hint}"
        raise DataError(f"{self.final}: FFCV's writer worker (pid {p.pid}) failed: {text or f'exit code {p.exitcode}'}"
                        "; fix that and rerun `dlwt convert` (nothing was kept)")

    def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
        self.num_samples = num_samples
        self.prepare()  # writes the header, creates self.metadata_sm (shared memory)
        workqueue, allocations_queue, errors = Queue(), Queue(), Queue()
        for todo in queue_content:
            workqueue.put(todo)
        for _ in range(self.num_workers):
            workqueue.put(None)  # one stop token per worker
        done_number = Value(ctypes.c_uint64, 0)
        allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
        worker_args = (workqueue, self.metadata_sm, self.metadata_type, self.fields, allocator, done_number,
                       allocations_queue, *extra_worker_args)
        processes = [Process(target=_guarded, args=(work_fn, errors, *worker_args)) for _ in range(self.num_workers)]
        try:
            for p in processes:
                p.start()
            bar, previous = Progress(num_samples, self.desc), 0
            while previous != num_samples:
                self._failed(processes, errors)
                val = done_number.value
                if val > previous:
                    bar.update(val - previous)
                previous = val
                if previous != num_samples and all(p.exitcode == 0 for p in processes) \
                        and done_number.value != num_samples:  # all gone "cleanly" with work undone
                    raise DataError(f"{self.final}: FFCV's writer workers exited after {done_number.value} of "
                                    f"{num_samples} images; rerun `dlwt convert` (nothing was kept)")
                if previous != num_samples:
                    sleep(POLL_S)
            bar.close()
            allocation_list, got = [], 0
            while got < len(processes):  # each worker sends its allocations once its last page is written
                try:
                    allocation_list.extend(allocations_queue.get(timeout=POLL_S))
                    got += 1
                except queue.Empty:
                    self._failed(processes, errors)
            for p in processes:
                p.join()
            self.finalize(allocation_list)
        finally:
            for p in processes:
                if p.is_alive():  # a failure or Ctrl-C: the others may spin forever on the dead one's page
                    p.terminate()
            for p in processes:
                if p.pid is not None:
                    p.join()
            for q in (workqueue, allocations_queue, errors):
                q.cancel_join_thread()  # unread items must not block this process's exit
                q.close()
            self.metadata_sm.close()
            self.metadata_sm.unlink()

