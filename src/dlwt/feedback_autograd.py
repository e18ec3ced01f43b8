"""The backward passes of dlwt.rules' Feedback layers: autograd Functions whose forward is the ordinary
layer and whose backward sends the error to the input through B (W's gradient stays the ordinary one).

    y = FeedbackConv2dFn.apply(x, W, bias, B, sign_scale, stride, padding, dilation, groups)  # B=None: ss's sign(W)

A conv's backward is one call of aten.convolution_backward with B in the weight slot: grad_weight never reads
the weight, so one call returns the rule's input gradient and the true weight gradient at backprop's cost.
Under autocast the forward casts like nn.Conv2d/nn.Linear would (autograd.Function skips autocast), and the
backward casts B to the incoming gradient's dtype (bf16 stays bf16). kp's B (a Parameter) gets W's gradient.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _autocast(x, weight, bias):
    """Cast like autocast would cast nn.Conv2d/nn.Linear's inputs (autograd.Function skips it)."""
    device_type = x.device.type
    if device_type == "meta" or not torch.is_autocast_enabled(device_type):  # meta has no autocast (FLOP counts)
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    return x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def _feedback_matrix(saved, sign_scale, dtype):
    """B from what forward saved: B itself, or W for sign symmetry (B = sign(W) * scale)."""
    if sign_scale is not None:
        return torch.sign(saved).mul_(sign_scale).to(dtype)
    return saved.to(dtype)


class FeedbackLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, sign_scale):
        x, weight, bias = _autocast(x, weight, bias)
        ctx.save_for_backward(x, weight if feedback is None else feedback)
        ctx.sign_scale = sign_scale
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, saved = ctx.saved_tensors
        grad_x = grad_w = grad_b = grad_fb = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out @ _feedback_matrix(saved, ctx.sign_scale, grad_out.dtype)
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[3]:
            grad_w = g2.t() @ x.reshape(-1, x.shape[-1]).to(g2.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        if ctx.needs_input_grad[3]:  # kp: B gets exactly W's gradient (its own copy)
            grad_fb = grad_w.clone()
        return grad_x, grad_w, grad_b, grad_fb, None


class FeedbackConv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, feedback, sign_scale, stride, padding, dilation, groups):
        x, weight, bias = _autocast(x, weight, bias)
        ctx.save_for_backward(x, weight if feedback is None else feedback)
        ctx.sign_scale = sign_scale
        ctx.conf = (stride, padding, dilation, groups)
        ctx.bias_sizes = None if bias is None else [bias.shape[0]]
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        x, saved = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        need_fb = ctx.needs_input_grad[3]
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1] or need_fb,
                ctx.bias_sizes is not None and ctx.needs_input_grad[2]]
        feedback = _feedback_matrix(saved, ctx.sign_scale, grad_out.dtype)
        # grad_weight of a convolution never reads the weight, so B in the weight slot gives the rule's
        # input gradient and the true weight gradient in one call.
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad_out, x.to(grad_out.dtype), feedback, ctx.bias_sizes, stride, padding, dilation,
            False, [0, 0], groups, mask)
        grad_fb = grad_w.clone() if need_fb else None
        return (grad_x, grad_w if ctx.needs_input_grad[1] else None, grad_b, grad_fb,
                None, None, None, None, None)
