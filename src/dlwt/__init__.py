"""dlwt: Deep Learning without Weight Transport (Akrout et al., NeurIPS 2019) in PyTorch.

    import dlwt
    model = torchvision.models.resnet18()
    dlwt.convert(model, "wm")            # every Conv2d/Linear now sends errors back through B (before the optimiser)
    model.dlwt_conversion.left           # weight layers still on backprop, each with the reason (warned once)
    dlwt.mirror_step(model, steps=100)   # weight mirror warm-up (wm only)

The names below load torch on first use, not on `import dlwt`: the Snakefile imports dlwt.dag and dlwt.params
on login nodes, where `snakemake -n` must not spend seconds importing torch. The library needs torch alone
(dlwt.models also torchvision); the pipeline's packages (pyyaml, jsonschema, ...) are the cli extra.
"""
import importlib

__version__ = "0.1.0"
__all__ = [
    "RULES", "Conversion", "FeedbackConv2d", "FeedbackLinear", "alignment", "backprop_mode", "convert",
    "gradient_alignment", "mirror_step", "rule_of", "models",
]


def __getattr__(name):  # PEP 562: dlwt.convert etc. import dlwt.rules (and torch) when first asked for
    if name == "models":
        return importlib.import_module("dlwt.models")
    if name in __all__:
        return getattr(importlib.import_module("dlwt.mirror" if name == "mirror_step" else "dlwt.rules"), name)
    raise AttributeError(f"module 'dlwt' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
