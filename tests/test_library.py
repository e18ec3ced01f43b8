"""The library a user imports (issues 17.5, 19.2, 19.3, 19.5): `import dlwt` with torch alone, a CLI that imports
a stage's code only when it runs, convert saying what it converted and what it left, mirror_step on every padding
FeedbackConv2d takes, and the README's Python blocks run as written.

    nice pytest -q tests/test_library.py
"""
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import dlwt
from dlwt.rules import MIRROR_DEFAULTS, alignment, convert, mirror_step, noise_angle_deg

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: two OpenMP threads spinning against other jobs on a busy 2-core machine made a mirror step
    80x slower (8 s for 60 steps of a 4-to-8-channel conv against 0.1 s on one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

# Make these imports fail, as in a venv that lacks them (`--system-site-packages` would still see them).
BLOCKER = """
import sys
class Blocker:
    BLOCKED = {blocked!r}
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.BLOCKED:
            raise ModuleNotFoundError(f"blocked: {{name}}", name=name)
sys.meta_path.insert(0, Blocker())
"""


def python(code: str, blocked=()):
    return subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=set(blocked)) + code], capture_output=True,
                          text=True, timeout=300, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})


def test_the_library_needs_torch_alone():
    r = python("""
import torch, dlwt
from torch import nn
model = dlwt.convert(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(2)), "wm")
model = dlwt.convert(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 36, 2)), "wm")
assert dlwt.mirror_step(model, steps=2) == 2 and dlwt.rule_of(model) == "wm"
print("ok", sorted(m for m in ("jsonschema", "yaml", "pandas", "seaborn", "torchvision") if m in sys.modules))
""", blocked=("jsonschema", "yaml", "pandas", "seaborn", "torchvision"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok []"


def test_building_the_cli_parser_imports_no_stage_code():
    r = python("""
import dlwt.cli
p = dlwt.cli.build_parser()
p.parse_args(["params"])                      # a stage is imported when chosen: params needs yaml/jsonschema only
p.parse_args(["dag"])
print(sorted(m for m in ("torch", "torchvision", "pandas", "seaborn", "matplotlib") if m in sys.modules))
""")
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"


def test_a_library_only_install_says_which_extra_a_stage_needs():
    r = python("from dlwt.cli import main; sys.exit(main(['params']))", blocked=("yaml", "jsonschema"))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        "dlwt params: needs jsonschema, which is not installed: pip install 'dlwt[cli]' (the stages' extra; "
        "'dlwt[pipeline]' adds Snakemake and DVC)"]


def test_the_cli_still_knows_every_stage_and_its_flags(capsys):
    from dlwt.cli import STAGES, build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    out = capsys.readouterr().out
    assert all(stage in out for stage in STAGES)
    parser = build_parser()
    args = parser.parse_args(["extract", "--source", "synthetic"])  # one module declares acquire/extract/convert
    assert (args.source, args.func.__module__) == ("synthetic", "dlwt.data.stages")
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", "--write-mode", "png"])
    assert "invalid choice: 'png'" in capsys.readouterr().err


def test_the_pipeline_runs_the_librarys_mirror_defaults():
    from dlwt.params import defaults

    assert {k: defaults("mirror")[k] for k in MIRROR_DEFAULTS} == MIRROR_DEFAULTS


class _MyLinear(nn.Linear):
    pass


def test_convert_says_what_it_converted_and_warns_once_about_what_it_left():
    model = nn.Sequential(nn.Conv1d(3, 4, 3), nn.ConvTranspose2d(3, 4, 3), nn.MultiheadAttention(8, 2),
                          _MyLinear(3, 3), nn.Conv2d(3, 3, 3), nn.Linear(3, 3), nn.BatchNorm2d(3), nn.Embedding(5, 3))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert(model, "fa", exclude=["5"])
    assert len(caught) == 1
    assert re.search(r"5 weight layer\(s\) still learn by backprop, not fa: 0 \(Conv1d", str(caught[0].message))
    report = model.dlwt_conversion
    assert report.rule == "fa" and report.converted == ["4"]
    assert set(report.left) == {"0", "1", "2", "2.out_proj", "3", "5"}  # norms and Embedding are no weight layers
    assert "ConvTranspose2d" in report.left["1"] and "uses out_proj.weight directly" in report.left["2.out_proj"]
    assert report.left["3"].startswith("_MyLinear: a subclass of nn.Linear") and report.left["5"] == "excluded ('5')"
    assert type(model[5]) is nn.Linear and type(model[4]) is dlwt.FeedbackConv2d


def test_a_model_of_only_supported_layers_converts_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = dlwt.models.build("resnet8", 10, "kp")
    assert len(model.dlwt_conversion.converted) == 8 and model.dlwt_conversion.left == {}


@pytest.mark.parametrize("padding, mode", [(1, "reflect"), (1, "replicate"), ("same", "zeros"), ("same", "circular")])
def test_mirror_step_aligns_every_padding_feedback_conv_takes(padding, mode):
    """The mirror estimates W from independent noise whatever the padding: B reaches W up to the noise angle,
    with |B|/|W| about 1 (a padded copy of the noise would bias the edge taps)."""
    layer = convert(nn.Conv2d(4, 8, 3, padding=padding, padding_mode=mode, bias=False), "wm")
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    layer(x).sum().backward()  # the forward/backward the layer runs in training takes this padding too
    wd = 0.1  # faster than the default (0.005): 60 steps are 6 time constants
    mirror_step(nn.Sequential(layer), steps=60, lr=wd, weight_decay=wd, generator=torch.Generator().manual_seed(0))
    a = alignment(nn.Sequential(layer))["0"]
    assert a["angle_deg"] < 2 * noise_angle_deg(layer, wd, MIRROR_DEFAULTS["batch_size"], MIRROR_DEFAULTS["size"]) + 1
    assert 0.9 < a["norm_ratio"] < 1.1


def _python_blocks(text):
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_the_readmes_python_blocks_run_as_written(capsys):
    blocks = _python_blocks((REPO / "README.md").read_text())
    assert len(blocks) >= 2
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert '"fc": "excluded' in "".join(blocks) and "excluded ('fc')" in capsys.readouterr().out
