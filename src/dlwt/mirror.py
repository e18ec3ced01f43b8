"""Weight mirror (wm): B learns W from noise alone, between training steps; and what each rule does there.

    dlwt.mirror_step(model, steps=1000)    # a converted wm model's warm-up: B from random to ~W
    hook = after_step(model, "wm", every=1) # the training loop calls hook() after each optimiser step

Each wm layer gets noise x, computes y = W x without bias, and moves B toward the correlation y x^T, whose
expectation is noise_std^2 W. The names are also importable from dlwt.rules.
"""
from __future__ import annotations

import contextlib
import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from dlwt.rules import FEEDBACK_TYPES

# lr == weight_decay and noise_std 1 make B converge to W itself. The estimate's noise is W (S - I), S the
# noise's sample covariance, so the angle left is about atan(sqrt(fan_in * weight_decay / (2 * samples))),
# samples per step = batch_size * size^2 for EVERY layer: each conv's noise map is sized so that its output
# has size x size positions whatever its stride, and a Linear draws batch_size * size^2 vectors (as many
# samples as a conv gets; with only batch_size of them ResNet-18's fc stayed ~50 degrees from W). With these
# pipeline's defaults (batch 16 x 8 x 8 = 1024 samples): ~6 degrees for a 512-channel 3x3 conv (fan_in 4608).
# Halving weight_decay (and lr) or doubling batch_size shrinks the angle by sqrt(2); the first makes B track
# W more slowly (over ~1/weight_decay steps: a warm-up of ~1000 steps from random B), the second costs more
# per step (BENCHMARKS.md). These are the library's own (a user's `import dlwt` needs neither the pipeline's
# schema nor jsonschema/pyyaml); the pipeline's mirror.* defaults in params_schema.yaml are the same values
# (tests/test_library.py holds them equal).
MIRROR_DEFAULTS = {"noise_std": 1.0, "lr": 0.005, "weight_decay": 0.005, "batch_size": 16, "size": 8}


def mirror_samples(m: nn.Module, batch_size: int, size: int) -> int:
    """Noise samples one mirror step gives layer m: batch_size x its size x size output positions (a Linear
    draws that many vectors). The noise angle is about atan(sqrt(fan_in * weight_decay / (2 * samples)))."""
    return batch_size * size * size


def noise_angle_deg(m: nn.Module, weight_decay: float, batch_size: int, size: int) -> float:
    """The angle(B, W) the mirror's noise leaves in layer m at equilibrium (W fixed): the prediction above."""
    fan_in = m.weight[0].numel()
    return math.degrees(math.atan(math.sqrt(fan_in * weight_decay / (2 * mirror_samples(m, batch_size, size)))))


@functools.lru_cache(maxsize=256)
def _valid_tap_counts(kernel, stride, padding, dilation, size, device) -> torch.Tensor:
    """(kh, kw): for each kernel tap, the output positions where it read a real (unpadded) input.

    Normalising each tap's correlation by its own count makes E[correlation] = noise_var * W exactly;
    dividing by all positions would shrink the edge and corner taps of B.
    """
    per_axis = []
    for n_in, k, s, p, d in zip(size, kernel, stride, padding, dilation):
        n_out = (n_in + 2 * p - d * (k - 1) - 1) // s + 1
        pos = torch.arange(n_out)[:, None] * s + torch.arange(k)[None, :] * d - p  # input index per tap
        per_axis.append(((pos >= 0) & (pos < n_in)).sum(0).double())
    return (per_axis[0][:, None] * per_axis[1][None, :]).to(device)


@torch.no_grad()
def _mirror_layer(m, noise_std, lr, weight_decay, batch_size, size, generator):
    w, fb = m.weight, m.feedback
    opts = {"device": w.device, "dtype": w.dtype, "generator": generator}
    if isinstance(m, nn.Linear):
        n = mirror_samples(m, batch_size, size)
        x = torch.randn(n, m.in_features, **opts).mul_(noise_std)
        corr = (x @ w.t()).t() @ x  # sum over the samples of y x^T, shape of W
        fb.mul_(1 - weight_decay).add_(corr, alpha=lr / n)
        return
    if isinstance(m.padding, str) or m.padding_mode != "zeros":
        # reflect/replicate/circular or 'same': padded values would repeat real noise samples, and
        # E[y x^T] = noise_var * W needs independent ones. The estimate of W does not depend on the padding,
        # so run the noise unpadded, on a map just big enough for size x size output positions: every tap
        # then sees a real input at every position (its count is all positions).
        padding = (0, 0)
        hw = tuple((size - 1) * s + d * (k - 1) + 1 for k, d, s in zip(m.kernel_size, m.dilation, m.stride))
    else:
        # an input of size * stride px gives size x size output positions for ResNets' strided convs (3x3/p1,
        # 1x1/p0, 7x7/p3), so a stride-2 layer gets as many samples as a stride-1 one
        padding = tuple(m.padding)
        hw = tuple(max(size * s, d * (k - 1) + 1) for k, d, s in zip(m.kernel_size, m.dilation, m.stride))
    x = torch.randn(batch_size, m.in_channels, *hw, **opts).mul_(noise_std)
    if w.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, w, None, m.stride, padding, m.dilation, m.groups)
    # weight-gradient correlation of x and y (grad_weight of the conv at grad_output = y)
    _, corr, _ = torch.ops.aten.convolution_backward(
        y, x, w, None, list(m.stride), list(padding), list(m.dilation), False, [0, 0], m.groups,
        [False, True, False])
    counts = _valid_tap_counts(m.kernel_size, m.stride, padding, m.dilation, hw, w.device)
    fb.mul_(1 - weight_decay).addcdiv_(corr, counts.to(w.dtype), value=lr / batch_size)


def mirror_step(model: nn.Module, steps: int = 1, *, noise_std: float = MIRROR_DEFAULTS["noise_std"],
                lr: float = MIRROR_DEFAULTS["lr"], weight_decay: float = MIRROR_DEFAULTS["weight_decay"],
                batch_size: int = MIRROR_DEFAULTS["batch_size"], size: int = MIRROR_DEFAULTS["size"],
                generator: torch.Generator | None = None) -> int:
    """Weight mirror (wm): `steps` updates of every wm layer's B from noise alone; returns layers updated.

    Each layer gets its own noise x ~ N(0, noise_std^2): batch_size maps giving size x size output positions
    for a conv, batch_size * size^2 vectors for a Linear (every layer the same number of samples, see
    mirror_samples), y = W x without bias, and B <- (1 - weight_decay) B + lr * mean(y x^T). Since
    E[y x^T] = noise_std^2 W, B converges to (lr * noise_std^2 / weight_decay) W: the defaults make that
    factor 1, and the angle left is noise_angle_deg(layer, ...).
    """
    layers = [m for m in model.modules() if isinstance(m, FEEDBACK_TYPES) and m.rule == "wm"]
    device_type = layers[0].weight.device.type if layers else "cpu"
    # float32 whatever the caller's autocast; the meta device (FLOP counting) has no autocast to turn off
    with torch.autocast(device_type, enabled=False) if device_type != "meta" else contextlib.nullcontext():
        for _ in range(steps):
            for m in layers:
                _mirror_layer(m, noise_std, lr, weight_decay, batch_size, size, generator)
    return len(layers)


# What the training loop does for each rule between optimiser steps, in one place: `dlwt train`, `dlwt doctor`
# and bench/ all call after_step (only wm does anything).

def noise_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """`generator` itself when it lives on `device`, else a generator of `device` seeded from one draw of it.

    The pipeline keeps wm's noise state in a CPU generator whatever the device, so a checkpoint resumes on the
    other device type (a CUDA generator's state is 16 bytes, a CPU one's 5056: neither loads into the other),
    and ranks seeded alike still draw alike. The noise itself is drawn where the weights are: drawing it on the
    CPU and copying would cost more than the mirror step.
    """
    if generator is None or generator.device == device:
        return generator
    seed = int(torch.randint(2**63 - 1, (), generator=generator))
    return torch.Generator(device=device).manual_seed(seed)


def after_step(model: nn.Module, rule: str, *, every: int = 1, steps: int = 1, done: int = 0,
               generator: torch.Generator | None = None, **mirror):
    """The work `rule` adds after each optimiser step, as a function of no arguments; None when it adds none.

    wm: `steps` mirror steps (mirror_step's other keyword arguments in `mirror`) after every `every`-th training
    step, counted from `done` steps already trained, so a resumed run keeps its phase; `generator`: see
    noise_generator. Call it on the plain model (not a DDP or compiled wrapper): the mirror is eager code.
    """
    if rule != "wm":
        return None
    device = next(model.parameters()).device
    count = done

    def hook() -> None:
        nonlocal count
        count += 1
        if count % every == 0:
            mirror_step(model, steps, generator=noise_generator(generator, device), **mirror)
    return hook
