"""gpu-check part 2, rules: the feedback rules' numbers on the device against references.

For each of fa, ss, wm, kp on a converted torchvision ResNet-18 (ImageNet stem, train mode), one batch:
the gradients of every W, of kp's B and of the input
  - float32 on the device (TF32 off)                 against float64 on the CPU: rel. L2 error <= FP32_TOL
  - bf16 autocast + channels_last on the device      against the float32 device run: rel. L2 error at most
    BF16_VS_BP times backprop's own bf16 error on the same batch (or BF16_TOL, whichever is larger)
(the error of a tensor is |a - ref| / |ref| over the whole tensor; the worst tensor is reported). Then:
mirror_step with a generator on the device (two equal seeds give the identical B, another seed another B),
and kp's W - B after one fused-SGD step (momentum 0) is exactly (1 - lr * wd) times what it was.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

import dlwt
from dlwt.engine import sgd
from dlwt.rules import FEEDBACK_TYPES

RULES = ("bp", "fa", "ss", "wm", "kp")  # bp first: its bf16 error is the yardstick
FP32_TOL = 1e-3   # float32 accumulation over ~20 layers and BatchNorm's batch statistics: ~1e-5 expected
BF16_TOL = 6e-2   # bf16 keeps 8 bits of mantissa (~4e-3 per op), a few percent after ~20 layers
# ...but at initialisation with small batches BatchNorm's backward cancels: backprop itself is 42% off in bf16
# on the CPU (ResNet-18, 64 px, batch 4), so a rule is judged against bp's error on the same batch
BF16_VS_BP = 1.5
KP_TOL = 1e-5     # W - B is scaled by (1 - lr wd) up to float32 rounding


def _grads(model, x, y, *, autocast=None) -> dict[str, torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast is not None):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    out = {n: p.grad.detach().double().cpu() for n, p in model.named_parameters()
           if p.grad is not None and (n.endswith(".weight") or n.endswith(".feedback")) and p.ndim > 1}
    out["input"] = x.grad.detach().double().cpu()
    return out


def _worst(got: dict, ref: dict) -> tuple[float, str]:
    errs = {n: float((got[n] - r).norm() / r.norm().clamp_min(1e-30)) for n, r in ref.items()}
    name = max(errs, key=errs.get)
    return errs[name], name


def _model(profile, rule):
    torch.manual_seed(0)
    return dlwt.models.build(profile.numerics_arch, 10, rule, profile.numerics_stem)


def _no_tf32():
    """A true float32 reference: cuDNN and cuBLAS use TF32 (10-bit mantissa) for float32 by default."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def run(rec, profile, *, name, deadline):
    dev = torch.device(profile.device)
    if dev.type == "cuda":
        _no_tf32()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(profile.numerics_batch, 3, profile.numerics_res, profile.numerics_res, generator=g)
    y = torch.randint(0, 10, (profile.numerics_batch,), generator=g)
    rows = rec.data.setdefault("gradients", [])
    for rule in RULES:
        cpu64 = _model(profile, rule).double()
        ref64 = _grads(cpu64, x.double(), y)
        fp32 = copy.deepcopy(_model(profile, rule)).to(dev)
        ref32 = _grads(fp32, x.to(dev), y.to(dev))
        bf = _model(profile, rule).to(dev, memory_format=torch.channels_last)
        got = _grads(bf, x.to(dev).contiguous(memory_format=torch.channels_last), y.to(dev), autocast=True)
        e32, n32 = _worst(ref32, ref64)
        e16, n16 = _worst(got, ref32)
        kp_b = [n for n in ref64 if n.endswith(".feedback")]
        rows.append({"rule": rule, "fp32_vs_f64": e32, "fp32_worst": n32, "bf16_vs_fp32": e16, "bf16_worst": n16,
                     "tensors": len(ref64), "kp_B_grads": len(kp_b)})
        rec.check(f"{rule} fp32 {dev.type} vs float64 cpu", e32 <= FP32_TOL,
                  f"worst rel. error {e32:.2e} ({n32}) over {len(ref64)} tensors, tolerance {FP32_TOL:g}")
        if rule == "bp":
            bp16 = e16
        tol = max(BF16_TOL, BF16_VS_BP * bp16)
        rec.check(f"{rule} bf16 channels_last vs fp32", e16 <= tol,
                  f"worst rel. error {e16:.2e} ({n16}); bp's {bp16:.2e}; tolerance {tol:.2e}")
        if rule == "kp":
            rec.check("kp B gets W's gradient", len(kp_b) > 0 and all(
                torch.equal(ref64[b], ref64[b.replace(".feedback", ".weight")]) for b in kp_b),
                f"{len(kp_b)} feedback gradients equal their weight's (float64)")
    _mirror(rec, profile, dev)
    _kp_shrink(rec, profile, dev)
    return None


def _mirror(rec, profile, dev) -> None:
    def mirrored(seed):
        m = _model(profile, "wm").to(dev)
        gen = torch.Generator(device=dev).manual_seed(seed)
        dlwt.mirror_step(m, steps=3, generator=gen)
        return m, [layer.feedback.detach().clone() for layer in m.modules() if isinstance(layer, FEEDBACK_TYPES)]

    a, fa_ = mirrored(1)
    _, fb_ = mirrored(1)
    _, fc_ = mirrored(2)
    same = all(torch.equal(p, q) for p, q in zip(fa_, fb_))
    other = any(not torch.equal(p, q) for p, q in zip(fa_, fc_))
    rec.check(f"mirror_step {dev.type} generator", same and other,
              f"equal seeds give {'identical' if same else 'DIFFERENT'} B; another seed "
              f"{'another' if other else 'THE SAME'} B ({len(fa_)} layers, generator on {dev.type})")
    angles = [v["angle_deg"] for v in dlwt.alignment(a).values()]
    rec.data["mirror_3_steps_mean_angle_deg"] = sum(angles) / len(angles)


def _kp_shrink(rec, profile, dev) -> None:
    m = _model(profile, "kp").to(dev)
    lr, wd = 0.1, 0.05
    opt = sgd(m, lr, 0.0, wd)
    layers = [layer for layer in m.modules() if isinstance(layer, FEEDBACK_TYPES)]
    before = [(layer.weight - layer.feedback).detach().clone() for layer in layers]
    x = torch.randn(profile.numerics_batch, 3, profile.numerics_res, profile.numerics_res, device=dev)
    F.cross_entropy(m(x), torch.zeros(len(x), dtype=torch.long, device=dev)).backward()
    opt.step()
    errs = [float(((layer.weight - layer.feedback).detach() - (1 - lr * wd) * b).norm() / b.norm())
            for layer, b in zip(layers, before)]
    rec.check("kp W - B shrinks by (1 - lr wd)", max(errs) <= KP_TOL,
              f"worst rel. deviation {max(errs):.1e} over {len(layers)} layers after one fused SGD step "
              f"(lr {lr}, wd {wd}, momentum 0), tolerance {KP_TOL:g}")
