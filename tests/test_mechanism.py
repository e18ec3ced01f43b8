"""dlwt.mechanism's predictions hold for the real optimiser: kp's |B - W| decays exactly as the recursion says,
and the wm mirror settles near its predicted noise angle."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dlwt
from dlwt.engine import lr_lambda, sgd
from dlwt.mechanism import kp_decay, wm_predicted


@pytest.mark.parametrize("nesterov", [True, False])
def test_kp_distance_decays_exactly_as_the_recursion_predicts(nesterov):
    """Whatever the data and the gradients, B - W of every kp layer shrinks by the scalar c_t of the run's
    schedule (warm-up, then linear to 0): the gradients cancel in B - W and only weight decay acts."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                          nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 5 * 5, 10))
    dlwt.convert(model, "kp")
    model = model.double()
    cfg = {"epochs": 3, "warmup_epochs": 1, "schedule": "linear", "milestones": [], "gamma": 0.1,
           "momentum": 0.9, "nesterov": nesterov, "weight_decay": 5e-2}  # large wd: a visible decay in 15 steps
    n, lr = 5, 0.2
    opt = sgd(model, lr, cfg["momentum"], cfg["weight_decay"], nesterov)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg, n))
    start = {name: al["dist"] for name, al in dlwt.alignment(model).items()}
    predicted = kp_decay(cfg, lr, n)
    assert predicted[0] == 1.0 and len(predicted) == cfg["epochs"] + 1
    x, y = torch.randn(8, 3, 12, 12, dtype=torch.double), torch.randint(0, 10, (8,))
    for step in range(cfg["epochs"] * n):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (step + 1) % n == 0:
            c = predicted[(step + 1) // n]
            for name, al in dlwt.alignment(model).items():
                assert al["dist"] == pytest.approx(c * start[name], rel=1e-9), (name, step)
    assert predicted[-1] < 0.7  # the test would pass for no decay at all otherwise


def test_kp_decay_is_about_lr_wd_over_one_minus_momentum_per_step():
    cfg = {"epochs": 1, "warmup_epochs": 0, "schedule": "step", "milestones": [], "gamma": 0.1,
           "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}
    c = kp_decay(cfg, 0.05, 20_000)[-1]
    assert math.log(c) == pytest.approx(-20_000 * 0.05 * 5e-4 / 0.1, rel=0.01)


def test_wm_settles_near_its_predicted_noise_angle_with_w_fixed():
    torch.manual_seed(0)
    model = dlwt.models.build("resnet8", 10, "wm", "small")
    mirror = {"noise_std": 1.0, "lr": 0.05, "weight_decay": 0.05, "batch_size": 8, "size": 8}
    dlwt.mirror_step(model, steps=300, generator=torch.Generator().manual_seed(0), **mirror)
    pred = wm_predicted("resnet8", "small", mirror)
    got = {name: al["angle_deg"] for name, al in dlwt.alignment(model).items()}
    assert set(pred) == set(got)
    for name in pred:  # within a third of the prediction: it is an estimate from the noise's covariance
        assert abs(got[name] - pred[name]) < pred[name] / 3 + 1.0, (name, got[name], pred[name])
