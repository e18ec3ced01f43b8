"""Every device decision of a run, in one place: which device, which GPUs, how many CPUs, amp, memory format.

    from dlwt import devices
    devices.claim_gpus(2)                      # before CUDA starts: this job's own GPUs (CUDA_VISIBLE_DEVICES)
    dev = devices.Device.resolve("auto", local_rank=0, amp="bf16", channels_last=True)
    devices.cpus()                             # CPUs this process may use (affinity mask, not the node's count)

A CPU run and a CUDA run differ only in what `Device` holds (torch device, autocast dtype, memory format);
the training and evaluation code is the same. What was checked against library sources (no GPU is ever
available to this project, so these lines have never run on one):
- torch.cuda.device_count() initialises the CUDA runtime unless NVML answers, and after that a new
  CUDA_VISIBLE_DEVICES has no effect (torch/cuda/__init__.py: device_count, _device_count_nvml), so the GPU
  count for claiming is read in a child process and the parent sets CUDA_VISIBLE_DEVICES before any CUDA call.
- bf16 autocast on CUDA needs compute capability >= 8.0 for speed (torch.cuda.is_bf16_supported); on
  older GPUs it still runs (emulated) and `dlwt doctor` reports it.
- SLURM (and Docker's --gpus / Apptainer --nv) set CUDA_VISIBLE_DEVICES for the job: it is respected as is.
"""
from __future__ import annotations

import fcntl
import os
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dlwt.errors import DlwtError

if TYPE_CHECKING:
    import torch
# torch is imported inside the functions that need it: the data stages ask workers() and must not pay
# torch's import (seconds) for it

DEVICES = ("auto", "cuda", "cpu")
_HELD = []  # lock files this process holds for its whole life (its DDP ranks inherit them)
COUNT_TIMEOUT_S = 120


def cpus() -> int:
    """CPUs this process may run on: the affinity mask (what SLURM/taskset grant), not os.cpu_count()."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def local_world() -> int:
    """Processes of this job on this node (torchrun's LOCAL_WORLD_SIZE), 1 outside torchrun."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def workers(requested: int) -> int:
    """Loader workers for this process: `requested`, capped by its share of the CPUs it may use (numba, FFCV's
    thread pool, refuses more threads than the affinity mask allows)."""
    return max(0, min(int(requested), cpus() // local_world()))


def _gpu_count() -> int:
    """GPUs visible to a fresh process, without starting CUDA in this one (DLWT_FAKE_GPUS stands in for tests).
    A count that cannot be read is an error, not zero GPUs: zero would let the job go on without a claim."""
    fake = os.environ.get("DLWT_FAKE_GPUS")
    if fake is not None:
        return int(fake)
    code = "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"
    fix = "set CUDA_VISIBLE_DEVICES to this job's GPUs yourself (then nothing is claimed), or check nvidia-smi"
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=COUNT_TIMEOUT_S)
        return int(out.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        raise DlwtError(f"counting this machine's GPUs took over {COUNT_TIMEOUT_S} s (a hung driver?): {fix}") from None
    except (OSError, ValueError, IndexError, subprocess.SubprocessError) as e:
        raise DlwtError(f"could not count this machine's GPUs ({type(e).__name__}: {e}): {fix}") from None


def _lock_dir() -> str:
    """The folder of the GPU locks: DLWT_GPU_LOCKS, else <tmp>/dlwt-gpus-<uid>. It must be a real folder owned by
    this user and closed to others (0700): a lock file another user could plant (a symlink to a file of ours,
    followed by root) would make the claim write through it."""
    path = os.environ.get("DLWT_GPU_LOCKS") or os.path.join(tempfile.gettempdir(), f"dlwt-gpus-{os.getuid()}")
    fix = "remove it, or point DLWT_GPU_LOCKS at a folder of your own"
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise DlwtError(f"GPU lock folder {path}: {e.strerror}: {fix}") from None
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise DlwtError(f"GPU lock folder {path} is not a folder (a file or a symlink): {fix}")
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise DlwtError(f"GPU lock folder {path} is not yours alone (owner uid {st.st_uid}, mode "
                        f"{stat.S_IMODE(st.st_mode):o}; want uid {os.getuid()}, 700): {fix}")
    if not os.access(path, os.W_OK | os.X_OK):
        raise DlwtError(f"GPU lock folder {path} is read-only: {fix}")
    return path


def _open_lock(folder: str, i: int) -> int:
    """gpu<i>.lock opened without following a symlink, and only if it is a regular file of ours."""
    path = os.path.join(folder, f"gpu{i}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise DlwtError(f"GPU lock {path}: {e.strerror} (a symlink?): remove it") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        os.close(fd)
        raise DlwtError(f"GPU lock {path} is not a regular file of yours: remove it")
    return fd


def claim_gpus(n: int) -> list[int] | None:
    """Claim `n` GPUs of this machine for this process (and what it execs) and make only them visible.

    Concurrent jobs on one multi-GPU machine (`snakemake --resources gpu=8`) each get their own set: a GPU is
    taken by holding an flock on <tmp>/dlwt-gpus-<uid>/gpu<i>.lock, released when the process ends. Where the
    environment already chose (CUDA_VISIBLE_DEVICES set: SLURM, docker --gpus '"device=1"', a user) nothing is
    claimed and None is returned. Call before CUDA starts (before the DDP ranks are launched).

    Jobs see each other's claims only through the same lock folder: containers with a private /tmp must be
    given one DLWT_GPU_LOCKS (a folder of the user's, bind-mounted into each), and two users on one machine
    never see each other's (the folder is theirs alone): let a scheduler hand out GPUs there.
    """
    if n <= 0 or os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return None
    total = _gpu_count()
    if total == 0:
        return None  # no GPU at all: Device.resolve says so if the run needs one
    got = []
    folder = _lock_dir()
    for i in range(total):
        fd = _open_lock(folder, i)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        os.set_inheritable(fd, True)  # inherited by the DDP ranks: the claim lasts the job
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        got.append((i, fd))
        if len(got) == n:
            break
    if len(got) < n:
        for _, fd in got:
            os.close(fd)
        raise DlwtError(f"{n} free GPU(s) wanted, {len(got)} of {total} free (others are held by running dlwt "
                        f"jobs, see {_lock_dir()}): lower Snakemake's --resources gpu= to the machine's GPUs, or "
                        "wait for the other jobs")
    _HELD.extend(fd for _, fd in got)
    ids = [i for i, _ in got]
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, ids))
    return ids


def cuda_report() -> str:
    """What torch says about CUDA, for error messages and `dlwt doctor`."""
    import torch

    built = torch.version.cuda or "none (a CPU-only torch build)"
    try:
        avail, count = torch.cuda.is_available(), torch.cuda.device_count()
    except Exception as e:  # noqa: BLE001 (a broken driver raises many kinds of errors)
        avail, count = False, f"error: {str(e).splitlines()[0]}"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
    return f"torch {torch.__version__} built for CUDA {built}; cuda available: {avail}, devices: {count}, " \
           f"CUDA_VISIBLE_DEVICES={visible}"


@dataclass(frozen=True)
class Device:
    """The device of one process and the two things that follow from it (decided here and nowhere else)."""

    torch: torch.device
    amp_dtype: torch.dtype | None      # bf16 autocast on CUDA when params ask for it; CPU runs float32
    memory_format: torch.memory_format

    @property
    def cuda(self) -> bool:
        return self.torch.type == "cuda"

    def autocast(self):
        import torch

        return torch.autocast(self.torch.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    @staticmethod
    def resolve(want: str = "auto", *, local_rank: int = 0, amp: str = "none",
                channels_last: bool = False) -> Device:
        """`want`: cuda (stop at once without a usable GPU), cpu, or auto (cuda when usable, else cpu)."""
        import torch

        if want not in DEVICES:
            raise DlwtError(f"train.device={want!r}: expected one of {', '.join(DEVICES)}")
        problem = None if want == "cpu" else _cuda_problem(local_rank)
        if want == "cuda" and problem:
            raise DlwtError(f"train.device=cuda but CUDA is not usable ({problem}; {cuda_report()}): check that the "
                            "NVIDIA driver supports this CUDA version (nvidia-smi), run Docker with --gpus all or "
                            "Apptainer with --nv, or set train.device: cpu (or auto)")
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        if want != "cpu" and not problem:
            # cuDNN times its kernels once per input shape and keeps the fastest (shapes are fixed per run);
            # set here, where train, evaluate and doctor get their Device, so all run the kernels bench measures
            torch.backends.cudnn.benchmark = True
            return Device(torch.device("cuda", local_rank), torch.bfloat16 if amp == "bf16" else None, fmt)
        return Device(torch.device("cpu"), None, fmt)


def _cuda_problem(local_rank: int) -> str | None:
    """None when CUDA works for this rank's GPU (it becomes the current device), else what is wrong. A tiny
    kernel runs, so an old driver or a GPU arch the wheel lacks fails here, not in the first training step;
    set_device first, so that no rank starts a context on GPU 0."""
    import torch

    try:
        if not torch.cuda.is_available():
            return "torch.cuda.is_available() is False"
        if torch.cuda.device_count() <= local_rank:
            return f"local rank {local_rank} needs {local_rank + 1} visible GPUs"
        torch.cuda.set_device(local_rank)
        torch.ones(1, device=torch.device("cuda", local_rank)).add_(1).item()
        return None
    except Exception as e:  # noqa: BLE001 (a broken driver raises many kinds of errors)
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
