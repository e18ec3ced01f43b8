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


# The weight mirror (mirror_step, its defaults and prediction, after_step) lives in dlwt.mirror; its names stay
# importable from here (`from dlwt.rules import mirror_step`), loaded on first use (PEP 562).
_MIRROR = ("MIRROR_DEFAULTS", "mirror_samples", "noise_angle_deg", "mirror_step", "noise_generator", "after_step")


def __getattr__(name):
    if name in _MIRROR:
        from dlwt import mirror
        return getattr(mirror, name)
    raise AttributeError(f"module 'dlwt.rules' has no attribute {name!r}")
