"""DDP for the feedback rules, moving no more than backprop's gradients. Used by `dlwt train` under torchrun.

    ddp.launch(2, ["train", ...])                       # `dlwt train` with train.gpus: 2 runs its command as 2 ranks
    rank, world, dev = ddp.setup(params["train"])      # the ranks' env -> process group, this rank's Device
    net = ddp.wrap(model, dev, optimizer)                # the DDP module to step; `model` stays the plain one
    ddp.sync_buffers(model)                              # before evaluation: rank 0's BatchNorm statistics

What it avoids (checked in torch/nn/parallel/distributed.py, _set_params_and_buffers_to_ignore_for_model and
the reducer's handling of ignored parameters, and measured on 2 gloo ranks in tests/test_ddp.py):
- fa/wm's B is a buffer identical on every rank by construction (the same seed draws it, and the mirror step
  draws its noise from a generator seeded alike on every rank), so it is not broadcast each forward (44.7 MB
  per step for ResNet-18 otherwise); BatchNorm's running statistics still are (broadcast_buffers=True).
- kp's B receives exactly W's gradient. It is left out of DDP's all-reduce, and just before each optimiser
  step its gradient is set to W's already averaged one (an optimizer step pre-hook), so B stays an exact copy
  of what a single process would compute, without a second all-reduce.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import torch
import torch.distributed as dist
from torch import nn

from dlwt.devices import Device
from dlwt.rules import FEEDBACK_TYPES


def setup(tcfg: dict) -> tuple[int, int, Device]:
    """(rank, world size, this process's Device) from launch's (or torchrun's) environment, or a single process. NCCL on
    CUDA, gloo on CPU; the device is set before the process group starts (NCCL binds to the current one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = Device.resolve(tcfg["device"], local_rank=local, amp=tcfg["amp"], channels_last=tcfg["channels_last"])
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.cuda else "gloo", device_id=dev.torch if dev.cuda else None)
    return (dist.get_rank() if world > 1 else 0), world, dev


def feedback_names(model: nn.Module) -> list[str]:
    """Fully qualified names of every B (buffer or kp Parameter) and ss's fixed scale: identical on every rank
    by construction, so what DDP must not synchronise."""
    return [f"{name}.{attr}" for name, m in model.named_modules() if isinstance(m, FEEDBACK_TYPES)
            for attr in ("feedback", "sign_scale") if getattr(m, attr, None) is not None]


def copy_kp_grads(model: nn.Module) -> None:
    """kp: B.grad <- W.grad (W's gradient after DDP averaged it). A no-op for other rules."""
    for m in model.modules():
        if isinstance(m, FEEDBACK_TYPES) and m.rule == "kp" and m.weight.grad is not None:
            if m.feedback.grad is None:
                m.feedback.grad = m.weight.grad.clone()
            else:
                m.feedback.grad.copy_(m.weight.grad)


def wrap(model: nn.Module, dev: Device, optimizer) -> nn.Module:
    """DDP around `model` that leaves every B out of its traffic (see the module docstring)."""
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, feedback_names(model))
    if any(isinstance(m, FEEDBACK_TYPES) and m.rule == "kp" for m in model.modules()):
        optimizer.register_step_pre_hook(lambda *_: copy_kp_grads(model))
    return nn.parallel.DistributedDataParallel(model, device_ids=[dev.torch.index] if dev.cuda else None)


@torch.no_grad()
def sync_buffers(model: nn.Module) -> None:
    """Broadcast rank 0's BatchNorm statistics, so every rank evaluates the same model (during training each
    rank's last forward updated its own copy after DDP's broadcast)."""
    if not dist.is_initialized():
        return
    skip = {id(b) for m in model.modules() if isinstance(m, FEEDBACK_TYPES) for b in m.buffers(recurse=False)}
    for b in model.buffers():
        if id(b) not in skip:
            dist.broadcast(b, 0)


def ddp_bytes_per_step(model: nn.Module) -> int:
    """Bytes one rank sends per step under `wrap`: every gradient DDP all-reduces plus every broadcast buffer
    (what backprop's model moves; B adds nothing)."""
    ignored = set(feedback_names(model))
    grads = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n not in ignored)
    bufs = sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n not in ignored)
    return grads + bufs


def launch(nproc: int, argv: list[str]) -> int:
    """Run `python -m dlwt <argv>` as `nproc` DDP ranks on this node; returns the job's exit code.

    What `torchrun --standalone --nproc_per_node` does on one node, with the signals handled the way a
    preempted job needs. torchrun turns a SIGTERM of its own into a SignalException traceback and exit 1, and
    SIGKILLs the ranks 30 s later (torch/distributed/elastic/agent/server/api.py: run; launcher/api.py:
    launch_agent; multiprocessing/api.py: _terminate_process_handler). Here:
    - each rank runs in its own session, so a terminal's Ctrl-C reaches only this process, which passes one
      SIGTERM to every rank (a second Ctrl-C passes SIGINT: stop at once). SLURM signals every process of the
      job: a rank then gets SIGTERM twice, which is the same as once.
    - rank 0 saves at its next step boundary and exits 128+signal; the other ranks hold nothing to save (they
      may be waiting in a collective that rank 0 left), so once rank 0 is done they are ended.
    - a rank that fails ends the others; the job exits with the first failure's code (2 after a one-line error).
    """
    got: list[int] = []
    procs: list[subprocess.Popen] = []

    def forward(signum, frame):
        got.append(signum)
        again = len(got) > 1 and signum == signal.SIGINT
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT if again else signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
               "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)}
        env.setdefault("OMP_NUM_THREADS", "1")  # as torchrun does with several ranks: no oversubscribed CPUs
        print(f"dlwt train: {nproc} DDP ranks on this node: {sys.executable} -m dlwt {' '.join(argv)}",
              file=sys.stderr, flush=True)
        for rank in range(nproc):
            procs.append(subprocess.Popen([sys.executable, "-m", "dlwt", *argv], start_new_session=True,
                                          env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}))
            if got:  # a signal while the ranks started
                procs[-1].send_signal(signal.SIGTERM)
        first = _wait(procs, got)
    finally:
        for p in procs:  # this process is going (an error of its own): its ranks go with it
            if p.poll() is None:
                p.kill()
                p.wait()
        for s, h in previous.items():
            signal.signal(s, h)
    if got:
        if procs[0].returncode == -got[0]:  # rank 0 ended before it could say so
            print(f"dlwt train: stopped by {signal.Signals(got[0]).name} while the ranks started; rerun the same "
                  "command to resume", file=sys.stderr, flush=True)
        return 128 + got[0]
    return first


def _wait(procs: list, got: list) -> int:
    """Wait for every rank; end the rest once rank 0 stopped on a signal or any rank failed. Returns the
    first failure's exit code (128+N for a rank killed by signal N), 0 when all succeeded."""
    first, ending = 0, None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            return first
        failed = [c for c in codes if c not in (None, 0)]
        if failed and not first and ending is None:
            first = failed[0] if failed[0] > 0 else 128 - failed[0]
        if ending is None and ((got and codes[0] is not None) or (failed and not got)):
            ending = time.monotonic()
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
        if ending is not None and (got or time.monotonic() - ending > 10):
            for p in procs:  # after rank 0's save: nothing left to lose; after a failure: 10 s to exit
                if p.poll() is None:
                    p.kill()
        time.sleep(0.1)


def _free_port() -> int:
    """A free TCP port on the loopback for rank 0's store (the kernel's pick; reused at once by rank 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
