"""dlwt: Deep Learning without Weight Transport (Akrout et al., NeurIPS 2019) in PyTorch.

    import dlwt
    model = torchvision.models.resnet18()
    dlwt.convert(model, "wm")            # every Conv2d/Linear now sends errors back through B
    dlwt.mirror_step(model, steps=100)   # weight mirror warm-up (wm only)
"""
from dlwt import models  # noqa: F401  (dlwt.models.build)
from dlwt.rules import (
    RULES,
    FeedbackConv2d,
    FeedbackLinear,
    alignment,
    backprop_mode,
    convert,
    gradient_alignment,
    mirror_step,
    rule_of,
)

__version__ = "0.1.0"
__all__ = [
    "RULES", "FeedbackConv2d", "FeedbackLinear", "alignment", "backprop_mode", "convert",
    "gradient_alignment", "mirror_step", "rule_of",
]
