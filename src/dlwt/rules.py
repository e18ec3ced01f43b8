"""The five learning rules of Akrout et al. (2019) for any PyTorch model.

    model = torchvision.models.resnet18()
    convert(model, "kp")                 # every nn.Conv2d / nn.Linear becomes a Feedback layer
    mirror_step(model, steps=100)        # wm only: align B with W from noise, no data
    alignment(model)                     # {layer: {"angle_deg", "norm_ratio"}}

Each Feedback layer keeps the ordinary forward pass. Its backward sends the error to the layer's input
through a feedback matrix B of W's shape instead of W, while W's own gradient stays the ordinary one:

    rule  B                                    how B changes
    bp    W (plain torch layers, no custom code)
    fa    random, drawn like W                 never
    ss    sign(W) * scale (W's init std)       follows W's signs (computed in backward, never stored)
    wm    random at start                      mirror_step(): B <- (1 - wd) B + lr * E[y x^T] on noise x, y = W x
    kp    random at start, an nn.Parameter     gets exactly W's gradient, weight decay and optimiser step

The backward of a Feedback conv is one call of aten.convolution_backward with B in the weight slot: it
returns the input gradient (through B) and the weight gradient (which never reads the weight) together,
so it costs what backprop's backward costs. Under autocast the forward casts like nn.Conv2d/nn.Linear
would, and the backward casts B to the incoming gradient's dtype (bf16 stays bf16).

torch.compile traces the layers whole (the autograd Functions are traceable; no graph break in forward or
backward). mirror_step, alignment and gradient_alignment are plain eager code: call them outside the
compiled module. DDP: convert before wrapping. kp's B is a Parameter that gets W's gradient, which DDP has
already averaged, so it needs no all-reduce of its own; fa/wm's B is a buffer that is identical on every rank
by construction (drawn from the same seed; mirror_step takes a `generator`, so ranks seeded alike draw the same
noise), and the pipeline's dlwt.ddp.wrap tells DDP not to broadcast it: only backprop's traffic moves.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import functools
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from dlwt.feedback_autograd import FeedbackConv2dFn, FeedbackLinearFn

RULES = ("bp", "fa", "ss", "wm", "kp")
# B of these rules is a tensor of W's shape saved in the state dict as "<layer>.feedback"
STORED_FEEDBACK = ("fa", "wm", "kp")


class _FeedbackLayer:
    """What FeedbackConv2d and FeedbackLinear share: B, its initialisation and the bp override."""

    rule: str

    def _init_feedback(self, rule: str, scale: float | None = None, generator=None) -> None:
        if rule not in RULES or rule == "bp":
            raise ValueError(f"Feedback layers take rule fa, ss, wm or kp, not {rule!r}")
        self.rule = rule
        self.use_backprop = False  # set by backprop_mode() to measure the true gradient
        w = self.weight.detach()
        if w.is_meta:  # built by convert() on the meta device; it calls again once W is the real one
            self.register_buffer("feedback", None)
            self.register_buffer("sign_scale", None)
            return
        std = float(w.float().std()) if w.numel() > 1 else 0.0
        if not std > 0:  # zero-initialised or single-weight layer: fall back to a He-like fan-in std
            std = 1.0 / math.sqrt(max(1, w[0].numel()))
        if rule == "ss":
            self.register_buffer("feedback", None)
            # a buffer, so that the state dict restores the exact B
            self.register_buffer("sign_scale", torch.tensor(float(scale) if scale is not None else std,
                                                            dtype=w.dtype, device=w.device))
            return
        self.register_buffer("sign_scale", None)
        fb = torch.randn(w.shape, generator=generator, dtype=torch.float32, device="cpu")
        fb = fb.mul_(std).to(device=w.device, dtype=w.dtype)
        if rule == "kp":
            self.feedback = nn.Parameter(fb)
        else:
            self.register_buffer("feedback", fb)

    def feedback_weight(self) -> torch.Tensor:
        """The B this layer uses now (detached)."""
        if self.rule == "ss":
            return torch.sign(self.weight.detach()) * self.sign_scale
        return self.feedback.detach()

    def _feedback_args(self):
        return (None if self.rule == "ss" else self.feedback), self.sign_scale

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rule={self.rule}"


class FeedbackLinear(_FeedbackLayer, nn.Linear):
    """nn.Linear whose backward sends the error to the input through B (see module docstring)."""

    def __init__(self, in_features, out_features, bias=True, rule="fa", *, scale=None, generator=None,
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_feedback(rule, scale, generator)

    def forward(self, x):
        if self.use_backprop:
            return F.linear(x, self.weight, self.bias)
        return FeedbackLinearFn.apply(x, self.weight, self.bias, *self._feedback_args())


class FeedbackConv2d(_FeedbackLayer, nn.Conv2d):
    """nn.Conv2d whose backward sends the error to the input through B (see module docstring)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", rule="fa", *, scale=None, generator=None, device=None,
                 dtype=None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device=device, dtype=dtype)
        self._init_feedback(rule, scale, generator)

    def _conv_forward(self, x, weight, bias):
        if self.use_backprop:
            return super()._conv_forward(x, weight, bias)
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            # pad explicitly (autograd handles F.pad) so that the custom conv sees integer zero padding
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0, 0)
        return FeedbackConv2dFn.apply(x, weight, bias, *self._feedback_args(), list(self.stride),
                                       list(padding), list(self.dilation), self.groups)


FEEDBACK_TYPES = (FeedbackConv2d, FeedbackLinear)


def _new_layer(old: nn.Module, rule: str, scale=None, generator=None) -> nn.Module:
    """A layer of the rule's type that shares `old`'s weight and bias Parameters (built on meta: no copy)."""
    rule_kw = {} if rule == "bp" else {"rule": rule}
    meta = {"device": "meta", "dtype": old.weight.dtype}
    if isinstance(old, nn.Conv2d):
        cls = nn.Conv2d if rule == "bp" else FeedbackConv2d
        new = cls(old.in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                  old.dilation, old.groups, old.bias is not None, old.padding_mode, **meta, **rule_kw)
    else:
        cls = nn.Linear if rule == "bp" else FeedbackLinear
        new = cls(old.in_features, old.out_features, old.bias is not None, **meta, **rule_kw)
    new.weight, new.bias = old.weight, old.bias
    if rule != "bp":
        new._init_feedback(rule, scale, generator)  # again, now that W is real (the meta pass drew nothing)
    new.train(old.training)
    return new


# Weight layers convert leaves as they are (they learn by ordinary backprop), each with the reason. Norm layers
# (1-D weights) and Embedding (a lookup: there is no input to send an error to) are not weight layers here.
_NOT_CONVERTED = {
    (nn.Conv1d, nn.Conv3d): "convert supports nn.Conv2d and nn.Linear only",
    (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d): "transposed convs are not supported",
    (nn.Bilinear,): "convert supports nn.Conv2d and nn.Linear only",
    (nn.MultiheadAttention,): "its projections run inside F.multi_head_attention_forward, not through Linear layers",
    (nn.RNNBase, nn.RNNCellBase): "recurrent layers are not supported",
}


@dataclasses.dataclass
class Conversion:
    """What convert() did, kept as `model.dlwt_conversion`: the layers now on `rule`, and every weight layer left
    to learn by backprop with the reason (excluded, or a type the rules do not cover)."""

    rule: str
    converted: list = dataclasses.field(default_factory=list)
    left: dict = dataclasses.field(default_factory=dict)


def _why_not(full: str, module: nn.Module, parent: nn.Module, exclude) -> str | None:
    """Why convert leaves `module` alone (None: it converts it, or it is no weight layer)."""
    kind = type(module).__name__
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        pat = next((p for p in exclude if fnmatch.fnmatchcase(full, p)), None)
        if pat is not None:
            return f"excluded ({pat!r})"
        if isinstance(parent, nn.MultiheadAttention):
            return "MultiheadAttention uses out_proj.weight directly (F.multi_head_attention_forward), not its forward"
        if type(module) not in (nn.Conv2d, nn.Linear, *FEEDBACK_TYPES):
            return f"{kind}: a subclass of nn.{type(module).__mro__[1].__name__} whose forward convert does not know"
        return None
    for types, why in _NOT_CONVERTED.items():
        if isinstance(module, types):
            return f"{kind}: {why}"
    return None


def convert(model: nn.Module, rule: str, *, exclude=(), scale: float | None = None, generator=None):
    """Make every nn.Conv2d and nn.Linear of `model` learn by `rule`, in place; returns the model.

    W and bias stay the same Parameter objects. `exclude`: module names or fnmatch patterns to leave as
    they are (e.g. ["fc"] keeps the classifier as it is). `scale`: ss's fixed magnitude (default: each
    layer's W std at conversion). `generator`: a torch.Generator for B's draw. `rule="bp"` turns Feedback
    layers back into plain torch layers. A bare Conv2d/Linear is returned converted (it has no parent).

    Supported: exactly nn.Conv2d (any padding mode, stride, dilation, groups) and nn.Linear. Left to learn by
    backprop, with one warning per call: Conv1d/Conv3d, transposed convs, Bilinear, RNNs, MultiheadAttention
    (its out_proj too: its weight is used directly) and unknown subclasses of Conv2d/Linear.
    `model.dlwt_conversion` (a Conversion) lists the converted layers and those left, each with the reason.

    Convert BEFORE building the optimiser: kp's B is a new Parameter, and an optimiser built earlier does
    not hold it (B would never train); fa/wm/ss need no optimiser state, but convert first all the same.
    """
    if rule not in RULES:
        raise ValueError(f"unknown learning rule {rule!r}: expected one of {', '.join(RULES)}")
    if isinstance(model, (nn.Conv2d, nn.Linear)):
        return _new_layer(model, rule, scale, generator)
    report = Conversion(rule)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            full = f"{name}.{child_name}" if name else child_name
            why = _why_not(full, child, module, exclude)
            if why is not None:
                report.left[full] = why
            elif isinstance(child, (nn.Conv2d, nn.Linear)):
                setattr(module, child_name, _new_layer(child, rule, scale, generator))
                report.converted.append(full)
    unsupported = {n: w for n, w in report.left.items() if not w.startswith("excluded")}
    if unsupported and rule != "bp":
        listed = "; ".join(f"{n} ({w})" for n, w in list(unsupported.items())[:3])
        warnings.warn(f"dlwt.convert: {len(unsupported)} weight layer(s) still learn by backprop, not {rule}: "
                      f"{listed}{'; ...' if len(unsupported) > 3 else ''} (all: model.dlwt_conversion.left)",
                      stacklevel=2)
    model.dlwt_conversion = report
    return model


def rule_of(model: nn.Module) -> str:
    """The rule of `model`'s Feedback layers ("bp" if it has none); ValueError if they disagree."""
    rules = {m.rule for m in model.modules() if isinstance(m, FEEDBACK_TYPES)}
    if len(rules) > 1:
        raise ValueError(f"model mixes learning rules {sorted(rules)}")
    return rules.pop() if rules else "bp"


def weight_layers(model: nn.Module):
    """(name, layer) for every Conv2d/Linear, in module order (the order of depth for torchvision nets)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


@contextlib.contextmanager
def backprop_mode(model: nn.Module):
    """Within the block every Feedback layer backpropagates through W (used to get the true gradient)."""
    layers = [m for m in model.modules() if isinstance(m, FEEDBACK_TYPES)]
    before = [m.use_backprop for m in layers]
    for m in layers:
        m.use_backprop = True
    try:
        yield model
    finally:
        for m, b in zip(layers, before):
            m.use_backprop = b


def _angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    denom = a.norm() * b.norm()
    if denom == 0:
        return float("nan")
    return math.degrees(math.acos(float((a @ b / denom).clamp(-1.0, 1.0))))


def alignment(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per Conv2d/Linear layer: angle between vec(B) and vec(W) in degrees, |B|/|W|, |W| and |B - W|
    (bp: 0, 1, |W|, 0). |B - W| is what kp's weight decay shrinks (dlwt.mechanism predicts it)."""
    out = {}
    for name, m in weight_layers(model):
        w = m.weight.detach()
        b = m.feedback_weight() if isinstance(m, FEEDBACK_TYPES) else w
        wd, bd = w.double(), b.detach().double()
        out[name] = {"angle_deg": 0.0 if b is w else _angle_deg(b, w),
                     "norm_ratio": float(bd.norm() / wd.norm().clamp_min(1e-300)),
                     "w_norm": float(wd.norm()), "dist": float((bd - wd).norm())}
    return out


def gradient_alignment(model: nn.Module, inputs, targets, loss_fn=F.cross_entropy) -> dict[str, float]:
    """Per layer, the angle (degrees) between the rule's weight gradient and backprop's, on one batch.

    Runs forward/backward twice (rule, then backprop_mode) in the model's current train/eval mode and
    leaves parameters, their .grad and every buffer (BatchNorm statistics) as they were.
    """
    layers = weight_layers(model)
    params = list(model.parameters())
    saved_grads = [p.grad for p in params]
    saved_buffers = [(buf, buf.detach().clone()) for buf in model.buffers()]

    def grads():
        for p in params:
            p.grad = None
        loss_fn(model(inputs), targets).backward()
        out = [m.weight.grad.detach().clone() for _, m in layers]
        for buf, value in saved_buffers:
            buf.copy_(value)
        return out

    try:
        with torch.enable_grad():
            rule_grads = grads()
            with backprop_mode(model):
                true_grads = grads()
    finally:
        for p, g in zip(params, saved_grads):
            p.grad = g
    return {name: _angle_deg(g, t) for (name, _), g, t in zip(layers, rule_grads, true_grads)}


# ---------------------------------------------------------------------------------------------------
# Weight mirror
# ---------------------------------------------------------------------------------------------------

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
