"""One epoch of training and one pass of evaluation, as plain functions that return dicts (DeiT-style).

Used by the train/evaluate stages and `dlwt doctor`; knows nothing about files, params or the CLI.
No host sync in the step loop: loss and accuracy accumulate on the device, and the host looks at them only
at sync points (every `sync_every` steps and at the end), where finiteness is checked (all ranks together
under DDP) and the caller's `on_sync` may log, checkpoint or ask to stop. A stop request (`stop`, a host-side
flag such as a signal handler's) is read after every step: reading a Python bool costs no sync.
"""
from __future__ import annotations

import contextlib
import time

import torch
import torch.nn.functional as F
from torch import nn


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or inf; the caller keeps its last good checkpoint."""


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """SGD groups: weight decay on conv/linear weights (and kp's B, which must match W's), none on
    BatchNorm and biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float, nesterov: bool = False):
    """SGD over param_groups() with the fused kernel: one pass over all parameters, on CPU as on CUDA.
    Measured on CPU for kp's ResNet-18 (22M parameters with B): fused 10 ms a step, foreach 46 ms, for-loop 22 ms."""
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov,
                           fused=True)


def accuracy_counts(logits: torch.Tensor, targets: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """How many of the batch have the target among the top-k logits, for each k (k capped at classes): a
    device tensor, so that counting does not wait for the device."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hit = top.eq(targets[:, None])
    return torch.stack([hit[:, :k].any(1).sum() for k in ks])


class EpochState:
    """Where an epoch stands: steps done and device-side sums, so a run stopped mid-epoch resumes with the
    same numbers (`as_dict`/`from_dict` go into the checkpoint)."""

    def __init__(self, device, step=0, loss_sum=0.0, correct=0, seen=0, seconds=0.0):
        self.step, self.seen, self.seconds = step, seen, seconds
        self.loss_sum = torch.tensor(float(loss_sum), dtype=torch.float64, device=device)
        self.correct = torch.tensor(int(correct), dtype=torch.int64, device=device)

    def as_dict(self) -> dict:
        return {"step": self.step, "loss_sum": float(self.loss_sum), "correct": int(self.correct),
                "seen": self.seen, "seconds": self.seconds}

    @classmethod
    def from_dict(cls, device, d: dict | None) -> EpochState:
        return cls(device, **(d or {}))


def lr_lambda(train_cfg: dict, steps_per_epoch: int):
    """Per-step multiplier of the base lr: step decay at milestones, or linear warm-up then linear to 0."""
    total = train_cfg["epochs"] * steps_per_epoch
    warmup = int(train_cfg["warmup_epochs"] * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if train_cfg["schedule"] == "step":
            epoch = step // steps_per_epoch
            return train_cfg["gamma"] ** sum(epoch >= m for m in train_cfg["milestones"])
        return max(0.0, (total - step) / max(1, total - warmup))

    return factor


def train_one_epoch(model, loader, optimizer, device, *, epoch=0, scheduler=None, after_step=None,
                    amp_dtype=None, label_smoothing=0.0, state: EpochState | None = None, sync_every=50,
                    on_sync=None, stop=None) -> dict:
    """Train over `loader` (already positioned at `state.step` by its set_epoch) once.

    `after_step()` runs after every optimiser step (wm: the mirror step); `scheduler` steps once per batch.
    Every `sync_every` steps and after the last one the host reads the device's flags: a NaN/inf loss raises
    NonFiniteLoss naming epoch and the step window; then `on_sync(state, last)` runs and may return True to
    stop the epoch early. Under DDP every rank syncs at the same steps and the flags are all-reduced, so all
    ranks stop together. `stop()` runs after every step, the epoch's last included, and True ends the epoch
    there (a preemption: the caller saves at once); only this rank's loss is checked then, with no collective,
    since under DDP the other ranks may already be inside the next step. Returns the epoch's (or the part's)
    train metrics and "stopped".
    """
    model.train()
    state = state or EpochState(device)
    bad = torch.zeros((), dtype=torch.int32, device=device)
    start, window, stopped = time.perf_counter(), state.step, False
    total = len(loader)
    # a run stopped after an epoch's last step resumes here with nothing left to train (FFCV would read and drop
    # the whole epoch to skip it)
    for images, targets in (loader if state.step < total else ()):
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(images)
            loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()
        loss = loss.detach()
        bad += ~torch.isfinite(loss)
        state.loss_sum += loss.double() * targets.shape[0]
        state.correct += accuracy_counts(logits.detach(), targets, ks=(1,))[0]
        state.seen += targets.shape[0]
        state.step += 1
        last = state.step >= total
        if stop is not None and stop():
            _check_finite(bad, epoch, window, state.step, all_ranks=False)
            stopped = True
            break
        if state.step % sync_every == 0 or last:
            _check_finite(bad, epoch, window, state.step, all_ranks=True)
            window = state.step
            state.seconds += time.perf_counter() - start
            start = time.perf_counter()
            if on_sync is not None and on_sync(state, last) and not last:
                stopped = True
                break
    state.seconds += time.perf_counter() - start
    seen = max(state.seen, 1)
    return {"train_loss": float(state.loss_sum) / seen, "train_top1": int(state.correct) / seen,
            "images_per_s": state.seen / max(state.seconds, 1e-9), "train_seconds": state.seconds,
            "stopped": stopped}


def _check_finite(bad, epoch, window, step, *, all_ranks):
    """Raise NonFiniteLoss when a loss since the last check was NaN/inf (summed over the DDP ranks if
    `all_ranks`): the one host sync of the window."""
    flags = bad.clone().float().view(1)
    if all_ranks and torch.distributed.is_initialized():
        torch.distributed.all_reduce(flags)
    if flags.item() > 0:
        raise NonFiniteLoss(f"loss not finite at epoch {epoch}, between steps {window + 1} and {step}: lower "
                            "the learning rate (train.lr) or check the input data")


def fixed_batch(loader, n: int):
    """The first n images (and labels) of a sequential loader: the fixed batch on which the angle between
    a rule's update and backprop's gradient is measured (the same images for every rule). The pass is closed
    when it has enough, so an FFCV loader's epoch thread (and its slot buffers) ends with it."""
    xs, ys, have = [], [], 0
    loader.set_epoch(0)
    with contextlib.closing(iter(loader)) as batches:
        for x, y in batches:
            xs.append(x)
            ys.append(y)
            have += y.shape[0]
            if have >= n:
                break
    return torch.cat(xs)[:n], torch.cat(ys)[:n]


@torch.no_grad()
def evaluate(model, loader, device, *, amp_dtype=None) -> dict:
    """Loss, top-1 and top-5 error over the whole of `loader` in eval mode (summed over DDP ranks, each
    holding its own shard of the images)."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits, images
    start = time.perf_counter()
    for images, targets in loader:
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            logits = model(images)
        sums[0] += F.cross_entropy(logits.float(), targets, reduction="sum")
        sums[1:3] += accuracy_counts(logits, targets)
        sums[3] += targets.shape[0]
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(sums)
    loss_sum, top1, top5, seen = sums.tolist()
    seen = int(seen)
    seconds = time.perf_counter() - start
    return {"val_loss": loss_sum / max(seen, 1), "val_top1_err": 1 - top1 / max(seen, 1),
            "val_top5_err": 1 - top5 / max(seen, 1), "val_images": seen, "val_seconds": seconds}
