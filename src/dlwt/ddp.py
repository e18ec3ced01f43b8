"""DDP for the feedback rules, moving no more than backprop's gradients. Used by `dlwt train` under torchrun.

    rank, world, dev = ddp.setup(params["train"])      # torchrun's env -> process group, this rank's Device
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

import torch
import torch.distributed as dist
from torch import nn

from dlwt.devices import Device
from dlwt.rules import FEEDBACK_TYPES


def setup(tcfg: dict) -> tuple[int, int, Device]:
    """(rank, world size, this process's Device) from torchrun's environment, or a single process. NCCL on
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
