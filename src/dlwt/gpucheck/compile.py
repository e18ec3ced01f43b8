"""gpu-check part 5, compile: torch.compile of each rule's model (what `train.compile: true` runs).

For each rule, on the numerics model and batch: the graph breaks TorchDynamo finds in the forward
(torch._dynamo.explain; the Feedback layers' autograd Functions must trace whole: 0 breaks), then the
gradients of every parameter and of the input after one forward/backward of torch.compile(model) against the
eager model's (float32, TF32 off). The GPU profile compiles with inductor (Triton kernels: it needs a C
compiler on the node, see the README); the CPU profile with aot_eager (the same tracing, no code generation:
seconds instead of minutes), so CI checks the tracing and the GPU check the generated kernels.
"""
from __future__ import annotations

import copy

import torch.nn.functional as F

from dlwt.gpucheck.numerics import _model, _no_tf32, _worst

RULES = ("bp", "fa", "ss", "wm", "kp")
TOL = 1e-3  # inductor fuses and reorders float32 reductions: ~1e-6 expected; aot_eager is exact


def _grads(model, x, y, forward=None) -> dict:
    x = x.detach().clone().requires_grad_()
    F.cross_entropy((model if forward is None else forward)(x), y).backward()
    out = {n: p.grad.detach().double().cpu() for n, p in model.named_parameters() if p.grad is not None}
    out["input"] = x.grad.detach().double().cpu()
    return out


def run(rec, profile, *, name, deadline):
    import torch._dynamo

    dev = torch.device(profile.device)
    if dev.type == "cuda":
        _no_tf32()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(profile.numerics_batch, 3, profile.numerics_res, profile.numerics_res, generator=g).to(dev)
    y = torch.randint(0, 10, (profile.numerics_batch,), generator=g).to(dev)
    rows = rec.data.setdefault("compile", [])
    for rule in RULES:
        torch._dynamo.reset()
        eager = _model(profile, rule).to(dev)
        explained = torch._dynamo.explain(copy.deepcopy(eager))(x)
        reasons = sorted({str(getattr(b, "reason", b))[:160] for b in explained.break_reasons})
        rec.check(f"{rule} graph breaks", explained.graph_break_count == 0,
                  f"{explained.graph_break_count} breaks, {explained.graph_count} graphs"
                  + (f": {'; '.join(reasons)}" if reasons else ""))
        compiled_model = copy.deepcopy(eager)
        ref = _grads(eager, x, y)
        got = _grads(compiled_model, x, y, torch.compile(compiled_model, backend=profile.compile_backend))
        err, worst = _worst(got, ref)
        rows.append({"rule": rule, "graph_breaks": explained.graph_break_count, "graphs": explained.graph_count,
                     "grad_rel_err": err, "worst": worst, "backend": profile.compile_backend})
        rec.check(f"{rule} compiled gradients", err <= TOL,
                  f"worst rel. error {err:.1e} ({worst}) vs eager, {profile.compile_backend}, tolerance {TOL:g}")
    return None
