"""torchvision ResNet-18/50 built to learn by one of the five rules.

    model = build("resnet18", num_classes=1000, rule="wm")                  # ImageNet stem, 224 px
    model = build("resnet18", num_classes=10, rule="kp", stem="small")      # 3x3 stem, no max-pool: 8-64 px
"""
from __future__ import annotations

import torchvision
from torch import nn

from dlwt.rules import convert

ARCHS = ("resnet18", "resnet50")
STEMS = ("imagenet", "small")


def build(arch: str, num_classes: int = 1000, rule: str = "bp", stem: str = "imagenet", *,
          exclude=(), scale: float | None = None, generator=None) -> nn.Module:
    """A torchvision ResNet with torchvision's own initialisation, every Conv2d/Linear on `rule`.

    stem="small" replaces the 7x7/2 conv and the max-pool by one 3x3/1 conv (as for CIFAR), so an 8-64 px
    image keeps enough resolution for the four stages. B is drawn after W, from W's initial std.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHS)}")
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}: expected one of {', '.join(STEMS)}")
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if stem == "small":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
        model.maxpool = nn.Identity()
    return convert(model, rule, exclude=exclude, scale=scale, generator=generator)
