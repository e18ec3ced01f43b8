"""ResNets built to learn by one of the five rules: torchvision's ResNet-18/50 (ImageNet) and the CIFAR
ResNets of He et al. 2016 (resnet8/20/32/56).

    model = build("resnet18", num_classes=1000, rule="wm")                  # ImageNet stem, 224 px
    model = build("resnet18", num_classes=10, rule="kp", stem="small")      # 3x3 stem, no max-pool: 8-64 px
    model = build("resnet20", num_classes=10, rule="fa")                    # CIFAR ResNet-20, 32 px (0.27M params)
"""
from __future__ import annotations

import torch.nn.functional as F
import torchvision
from torch import nn

from dlwt.errors import DlwtError
from dlwt.rules import convert

TORCHVISION = ("resnet18", "resnet50")
CIFAR_DEPTHS = {"resnet8": 1, "resnet20": 3, "resnet32": 5, "resnet56": 9}  # arch -> blocks per stage (6n+2)
ARCHS = (*TORCHVISION, *CIFAR_DEPTHS)
STEMS = ("imagenet", "small")


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; the shortcut is option A of He et al. 2016: identity, or where the
    shape changes, the input subsampled by 2 and zero-padded to the new width (no weights: every weight the
    rules train is a conv of the residual branch or the classifier)."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        sc = x[:, :, ::self.stride, ::self.stride] if self.stride > 1 else x
        if self.pad:
            sc = F.pad(sc, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + sc)


class CifarResNet(nn.Module):
    """He et al. 2016, section 4.2: a 3x3 conv to 16 channels, three stages of n BasicBlocks at widths
    16/32/64 (stride 2 at the start of the second and third), global average pooling, a linear classifier:
    6n+2 weight layers. Module names follow torchvision's (conv1, layerN.i.convK, fc)."""

    def __init__(self, n: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, cin = [], 16
        for i, width in enumerate((16, 32, 64)):
            blocks = [BasicBlock(cin if j == 0 else width, width, 2 if i and j == 0 else 1) for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():  # torchvision's ResNet initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build(arch: str, num_classes: int = 1000, rule: str = "bp", stem: str | None = None, *,
          exclude=(), scale: float | None = None, generator=None) -> nn.Module:
    """A ResNet with torchvision's initialisation, every Conv2d/Linear on `rule`. B is drawn after W, from
    W's initial std.

    stem (torchvision ResNets; default "imagenet"): "small" replaces the 7x7/2 conv and the max-pool by one
    3x3/1 conv (as for CIFAR), so an 8-64 px image keeps enough resolution for the four stages. The CIFAR
    ResNets always have the 3x3 stem: they take None or "small".
    """
    if arch not in ARCHS:
        raise DlwtError(f"unknown arch {arch!r}: expected one of {', '.join(ARCHS)}")
    if stem is not None and stem not in STEMS:
        raise DlwtError(f"unknown stem {stem!r}: expected one of {', '.join(STEMS)}")
    if arch in CIFAR_DEPTHS:
        if stem == "imagenet":
            raise DlwtError(f"{arch} is a CIFAR ResNet with a 3x3 stem for 8-64 px images: set model.stem: small")
        model = CifarResNet(CIFAR_DEPTHS[arch], num_classes)
        return convert(model, rule, exclude=exclude, scale=scale, generator=generator)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    if stem == "small":
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
        model.maxpool = nn.Identity()
    return convert(model, rule, exclude=exclude, scale=scale, generator=generator)
