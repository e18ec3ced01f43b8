"""The maths of the five rules, checked against references written independently (float64, im2col)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import dlwt
from dlwt.rules import FeedbackConv2d, FeedbackLinear, alignment, convert, gradient_alignment, mirror_step

FEEDBACK_RULES = ("fa", "ss", "wm", "kp")


def ref_conv(x, w, stride, padding, dilation, groups):
    """Convolution as im2col + einsum: shares no code with torch's convolution kernels."""
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    cols = F.unfold(x, (kh, kw), dilation=dilation, padding=padding, stride=stride)
    ho = (h + 2 * padding - dilation * (kh - 1) - 1) // stride + 1
    wo = (wd + 2 * padding - dilation * (kw - 1) - 1) // stride + 1
    cols = cols.view(n, groups, cg * kh * kw, ho * wo)
    out = torch.einsum("gok,ngkl->ngol", w.reshape(groups, o // groups, cg * kh * kw), cols)
    return out.reshape(n, o, ho, wo)


def feedback_of(layer):
    return layer.feedback_weight().double()


CONV_CASES = [  # (in, out, kernel, stride, padding, dilation, groups, bias)
    (3, 8, 3, 1, 1, 1, 1, True),
    (4, 6, 3, 2, 1, 1, 1, False),
    (4, 6, 3, 1, 2, 2, 1, True),
    (4, 8, 3, 2, 1, 1, 2, True),
    (6, 6, 1, 2, 0, 1, 3, False),
]


@pytest.mark.parametrize("rule", FEEDBACK_RULES)
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gradients_match_float64_reference(rule, case):
    cin, cout, k, s, p, d, g, bias = case
    torch.manual_seed(0)
    layer = FeedbackConv2d(cin, cout, k, s, p, d, g, bias, rule=rule).double()
    x = torch.randn(2, cin, 9, 9, dtype=torch.float64, requires_grad=True)
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)

    w = layer.weight.detach().clone().requires_grad_()
    xr = x.detach().clone().requires_grad_()
    (ref_conv(xr, w, s, p, d, g) * grad_out).sum().backward()
    torch.testing.assert_close(layer.weight.grad, w.grad, rtol=1e-10, atol=1e-10)  # true dW
    xb = x.detach().clone().requires_grad_()
    (ref_conv(xb, feedback_of(layer), s, p, d, g) * grad_out).sum().backward()
    torch.testing.assert_close(x.grad, xb.grad, rtol=1e-10, atol=1e-10)  # error sent through B
    assert not torch.allclose(x.grad, xr.grad)  # ... and not through W
    if bias:
        torch.testing.assert_close(layer.bias.grad, grad_out.sum((0, 2, 3)))
    if rule == "kp":
        torch.testing.assert_close(layer.feedback.grad, layer.weight.grad, rtol=0, atol=0)
    else:
        assert getattr(layer.feedback, "grad", None) is None


@pytest.mark.parametrize("rule", FEEDBACK_RULES)
def test_linear_gradients_match_float64_reference(rule):
    torch.manual_seed(0)
    layer = FeedbackLinear(7, 5, rule=rule).double()
    x = torch.randn(3, 4, 7, dtype=torch.float64, requires_grad=True)  # extra leading dim
    out = layer(x)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    b = feedback_of(layer)
    ref_dx = torch.einsum("nto,oi->nti", grad_out, b)
    ref_dw = torch.einsum("nto,nti->oi", grad_out, x.detach())
    torch.testing.assert_close(x.grad, ref_dx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.weight.grad, ref_dw, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(layer.bias.grad, grad_out.sum((0, 1)))


def small_resnet(rule, **kw):
    torch.manual_seed(0)
    return dlwt.models.build("resnet18", num_classes=10, rule=rule, stem="small", **kw)


def grads_of(model, x, y):
    model.zero_grad(set_to_none=True)
    out = model(x)
    F.cross_entropy(out, y).backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if n.endswith("weight")}


def test_bp_is_plain_torchvision_bit_for_bit():
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=10)
    converted = convert(copy.deepcopy(plain), "bp")
    assert all(type(m) in (nn.Conv2d, nn.Linear) for _, m in dlwt.rules.weight_layers(converted))
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    out_a, grads_a = grads_of(plain, x, y)
    out_b, grads_b = grads_of(converted, x, y)
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)
    # and converting a Feedback model back to bp gives plain layers again
    back = convert(small_resnet("fa"), "bp")
    assert dlwt.rule_of(back) == "bp"
    assert not any(isinstance(m, dlwt.rules.FEEDBACK_TYPES) for m in back.modules())


def test_fa_with_b_equal_w_is_backprop():
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    bp, fa = small_resnet("bp"), small_resnet("fa")
    with torch.no_grad():
        for m in fa.modules():
            if isinstance(m, dlwt.rules.FEEDBACK_TYPES):
                m.feedback.copy_(m.weight)
    out_bp, g_bp = grads_of(bp, x, y)
    out_fa, g_fa = grads_of(fa, x, y)
    assert torch.equal(out_bp, out_fa)
    for k in g_bp:
        torch.testing.assert_close(g_fa[k], g_bp[k], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", FEEDBACK_RULES)
def test_convert_keeps_outputs_and_state_dict_round_trip_keeps_b(rule):
    torch.manual_seed(0)
    plain = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = plain(x)
    weight = plain.conv1.weight
    model = convert(plain, rule)
    assert model.conv1.weight is weight and isinstance(model.conv1, nn.Conv2d)
    assert dlwt.rule_of(model) == rule
    assert torch.equal(model(x), expected)
    state = model.state_dict()
    if rule in dlwt.rules.STORED_FEEDBACK:
        assert state["conv1.feedback"].shape == weight.shape
    fresh = convert(torchvision.models.resnet18(num_classes=10), rule).eval()
    fresh.load_state_dict(state)
    for (name, a), (_, b) in zip(dlwt.rules.weight_layers(model), dlwt.rules.weight_layers(fresh)):
        assert torch.equal(a.feedback_weight(), b.feedback_weight()), name
    assert torch.equal(fresh(x), expected)


def test_convert_exclude_and_errors():
    model = convert(torchvision.models.resnet18(num_classes=10), "fa", exclude=["fc", "layer4.*"])
    assert type(model.fc) is nn.Linear and type(model.layer4[0].conv1) is nn.Conv2d
    assert isinstance(model.layer3[0].conv1, FeedbackConv2d)
    assert dlwt.rule_of(model) == "fa"
    with pytest.raises(ValueError, match="unknown learning rule 'xx'"):
        convert(model, "xx")
    convert(model.layer3, "kp")
    with pytest.raises(ValueError, match="mixes learning rules"):
        dlwt.rule_of(model)
    assert "rule=kp" in repr(model.layer3[0].conv1)


def test_kp_difference_decays_by_weight_decay_and_angle_falls():
    torch.manual_seed(0)
    model = nn.Sequential(FeedbackConv2d(3, 8, 3, padding=1, rule="kp"), nn.ReLU(), nn.Flatten(),
                          FeedbackLinear(8 * 36, 5, rule="kp"))
    layers = [model[0], model[3]]
    lr, wd, steps = 0.5, 0.1, 30  # (1 - lr*wd)^30 = 0.21
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    d0 = [(m.weight - m.feedback).detach().norm().item() for m in layers]
    angles = [alignment(model)]
    x, y = torch.randn(64, 3, 6, 6), torch.randint(0, 5, (64,))
    for step in range(steps):
        opt.zero_grad()
        batch = slice(16 * (step % 4), 16 * (step % 4 + 1))
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        opt.step()
        angles.append(alignment(model))
    for m, d in zip(layers, d0):
        got = (m.weight - m.feedback).detach().norm().item()
        assert got == pytest.approx((1 - lr * wd) ** steps * d, rel=1e-4)
    for name in ("0", "3"):
        assert angles[0][name]["angle_deg"] > 80 and angles[-1][name]["angle_deg"] < 20


@pytest.mark.parametrize("layer, batch", [(FeedbackConv2d(16, 32, 3, 2, 1, rule="wm"), 32),
                                          (FeedbackConv2d(8, 8, 3, 1, 1, groups=2, rule="wm"), 32),
                                          (FeedbackLinear(64, 10, rule="wm"), 256)],
                         ids=["conv", "grouped", "linear"])
def test_wm_mirror_aligns_b_with_w(layer, batch):
    torch.manual_seed(0)
    start = alignment(layer)[""]
    assert start["angle_deg"] > 80
    assert mirror_step(layer, steps=300, batch_size=batch, lr=0.05, weight_decay=0.05) == 1
    end = alignment(layer)[""]
    assert end["angle_deg"] < 10
    assert end["norm_ratio"] == pytest.approx(1.0, abs=0.15)


def test_wm_edge_taps_are_not_shrunk():
    # a 3x3 conv on tiny 4x4 noise maps: edge taps see fewer valid inputs; per-tap normalisation keeps
    # B's edge and centre taps at W's scale
    torch.manual_seed(0)
    layer = FeedbackConv2d(8, 8, 3, 1, 1, bias=False, rule="wm")
    mirror_step(layer, steps=400, size=4, lr=0.02, weight_decay=0.02)
    ratio = layer.feedback / layer.weight.detach()
    assert ratio[..., 0, 0].median().item() == pytest.approx(1.0, abs=0.1)  # corner tap
    assert ratio[..., 1, 1].median().item() == pytest.approx(1.0, abs=0.1)  # centre tap


def test_ss_follows_w_signs_with_fixed_scale():
    torch.manual_seed(0)
    layer = FeedbackConv2d(4, 4, 3, rule="ss")
    scale = float(layer.sign_scale)
    assert scale == pytest.approx(layer.weight.std().item())
    with torch.no_grad():
        layer.weight.neg_()  # every weight changes sign
    b = layer.feedback_weight()
    assert torch.equal(torch.sign(b), torch.sign(layer.weight.detach()))
    assert torch.allclose(b.abs(), torch.full_like(b, scale))
    assert alignment(layer)[""]["angle_deg"] < 45  # sign(W) is always well aligned with W
    assert "feedback" not in layer.state_dict() and "sign_scale" in layer.state_dict()


def test_gradient_alignment_and_state_preserved():
    model = small_resnet("fa").train()
    x, y = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    before = copy.deepcopy(model.state_dict())
    angles = gradient_alignment(model, x, y)
    assert list(angles) == [n for n, _ in dlwt.rules.weight_layers(model)]
    assert angles["fc"] < 1e-3  # the output layer's gradient does not depend on B
    assert angles["conv1"] > 30  # deep in a random-feedback net the gradient is far from backprop's
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in model.parameters())
    bp = small_resnet("bp")
    assert max(gradient_alignment(bp, x, y).values()) < 1e-3


def autocast_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
        loss = F.cross_entropy(out, y)
    loss.backward()
    assert out.dtype == torch.bfloat16
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("rule", ["fa", "wm", "kp"])
def test_bf16_autocast_with_b_equal_w_matches_backprop(rule):
    # under autocast the Feedback layers must cast exactly as nn.Conv2d/nn.Linear do, and B must follow
    # the bf16 gradient (public peers crash here: float32 B against a bf16 gradient)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    bp, model = small_resnet("bp"), small_resnet(rule)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, dlwt.rules.FEEDBACK_TYPES):
                m.feedback.copy_(m.weight)
    ref, got = autocast_grads(bp, x, y), autocast_grads(model, x, y)
    for n in ref:
        assert got[n].dtype == torch.float32
        torch.testing.assert_close(got[n], ref[n], rtol=2e-2, atol=1e-4)
    if rule == "kp":
        assert model.conv1.feedback.grad.dtype == torch.float32
        assert torch.equal(model.conv1.feedback.grad, model.conv1.weight.grad)


def test_bf16_autocast_sign_symmetry_runs():
    grads = autocast_grads(small_resnet("ss"), torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads.values())


@pytest.mark.parametrize("rule", ["fa", "kp"])
def test_channels_last_matches_contiguous(rule):
    model = small_resnet(rule).eval()  # eval BN: batch-4 statistics would amplify rounding differences
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    _, ref = grads_of(model, x, y)
    model = model.to(memory_format=torch.channels_last)
    _, got = grads_of(model, x.to(memory_format=torch.channels_last), y)
    for n in ref:
        torch.testing.assert_close(got[n], ref[n], rtol=1e-4, atol=1e-5)


def test_torch_compile_traces_without_graph_breaks():
    model = nn.Sequential(FeedbackConv2d(3, 4, 3, padding=1, rule="kp"), nn.ReLU(), nn.Flatten(),
                          FeedbackLinear(4 * 16, 3, rule="ss"))
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([0, 2])
    _, ref = grads_of(model, x, y)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    _, got = grads_of(compiled, x, y)
    for n in ref:
        torch.testing.assert_close(got[f"_orig_mod.{n}"] if f"_orig_mod.{n}" in got else got[n], ref[n])
    assert math.isfinite(model[0].feedback.grad.sum().item())
