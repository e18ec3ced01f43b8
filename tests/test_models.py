"""The CIFAR ResNets of He et al. 2016 (resnet8/20/32/56) beside torchvision's: depth, size, every rule.

    MPLBACKEND=Agg .venv/bin/pytest -q tests/test_models.py
"""
import pytest
import torch

import dlwt
from dlwt.errors import DlwtError
from dlwt.models import build
from dlwt.rules import FEEDBACK_TYPES, weight_layers


@pytest.mark.parametrize("arch, layers, params", [("resnet8", 8, 75_290), ("resnet20", 20, 269_722),
                                                  ("resnet32", 32, 464_154), ("resnet56", 56, 853_018)])
def test_cifar_resnets_have_the_papers_depth_and_size(arch, layers, params):
    model = build(arch, 10)
    assert len(weight_layers(model)) == layers  # 6n + 2 weight layers: option A shortcuts have no weights
    assert sum(p.numel() for p in model.parameters()) == params  # He et al. 2016 Table 6: 0.27M for ResNet-20
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("rule", dlwt.RULES)
def test_cifar_resnet_learns_by_any_rule(rule):
    torch.manual_seed(0)
    model = build("resnet8", 10, rule)
    fb = [m for m in model.modules() if isinstance(m, FEEDBACK_TYPES)]
    assert len(fb) == (0 if rule == "bp" else 8) and all(m.rule == rule for m in fb)
    x, y = torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(15):  # fit one batch: every rule lowers the loss
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_cifar_resnet_stem_and_unknown_arch():
    assert isinstance(build("resnet20", 10, "bp", "small").conv1, torch.nn.Conv2d)
    with pytest.raises(DlwtError, match="set model.stem: small"):
        build("resnet20", 10, "bp", "imagenet")
    with pytest.raises(DlwtError, match="unknown arch 'resnet9'"):
        build("resnet9", 10)
