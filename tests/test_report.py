"""The report stage on evaluation files and training logs made here: numbers, bold cell, figures, missing
runs, verdicts.

    MPLBACKEND=Agg .venv/bin/pytest -q tests/test_report.py
"""
import argparse
import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("seaborn")
from PIL import Image  # noqa: E402

from dlwt import report as rp  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"resnet18": ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "fc"],
          "resnet50": ["conv1", "layer1.0.conv1", "layer1.0.conv2", "layer1.0.conv3", "layer2.0.conv1", "fc"]}
# top-1 error fractions; seeds 0 and 1 get -/+ 0.005, so the mean is this and the sample std 0.71 points
TOP1 = {"resnet18": {"bp": 0.30, "fa": 0.80, "ss": 0.35, "wm": 0.31, "kp": 0.315},
        "resnet50": {"bp": 0.24, "fa": 0.75, "ss": 0.30, "wm": 0.25, "kp": 0.255}}
ANGLE = {"bp": 0.0, "fa": 89.0, "ss": 40.0, "wm": 10.0, "kp": 5.0}
FIGS = ["fig_error_vs_epoch", "fig_angle_vs_epoch_resnet18", "fig_angle_vs_epoch_resnet50",
        "fig_final_alignment"]


def make_params(archs=("resnet18", "resnet50"), rules=rp.figures.RULE_ORDER, seeds=(0, 1), exp="t"):
    return {"exp": exp, "model": {"archs": list(archs), "rules": list(rules), "seeds": list(seeds)},
            "train": {"epochs": 3, "batch_size": 256, "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
            "report": {"published": str(REPO / "paper" / "published.yaml")}}


def write_run(res: Path, arch, rule, seed, top1, epochs=3, eval_=True, log=True):
    name = rp.run_name(arch, rule, seed)
    top1 = top1 + (0.01 * seed - 0.005)
    layers = LAYERS[arch]
    if log:
        rows = [{"epoch": e, "lr": 0.1, "train_loss": 2.0 / e, "train_top1": 0.5, "val_loss": 1.5 / e,
                 "val_top1_err": min(1.0, top1 + 0.1 * (epochs - e)), "val_top5_err": top1 / 2,
                 "images_per_s": 1000.0, "seconds": 10.0,
                 "alignment": {ly: {"angle_deg": ANGLE[rule] * (1 + 0.1 * i) / e if rule != "fa" else 89.0,
                                    "norm_ratio": 1.0} for i, ly in enumerate(layers)}}
                for e in range(1, epochs + 1)]
        (res / "runs" / name).mkdir(parents=True, exist_ok=True)
        (res / "runs" / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if eval_:
        ev = {"arch": arch, "rule": rule, "seed": seed, "epoch": epochs, "val_loss": 1.0,
              "val_top1_err": top1, "val_top5_err": top1 - 0.2, "val_images": 50000,
              "images_per_s": 3000.0, "params": 11689512,
              "alignment": {ly: {"angle_deg": ANGLE[rule], "norm_ratio": 1.0} for ly in layers},
              "gradient_alignment": {ly: ANGLE[rule] / 2 + i for i, ly in enumerate(layers)},
              "provenance": {"git": "abc"}}
        (res / "eval").mkdir(parents=True, exist_ok=True)
        (res / "eval" / f"{name}.json").write_text(json.dumps(ev))


def write_all(res: Path, params: dict, top1=TOP1, skip_eval=(), skip_log=()):
    for a, r, s in rp.expected_runs(params):
        n = rp.run_name(a, r, s)
        if r in top1.get(a, {}):
            write_run(res, a, r, s, top1[a][r], eval_=n not in skip_eval, log=n not in skip_log)


# resnet50-wm has no run at all; resnet50-kp-s1 trained but was never evaluated
MISSING_WM = ["resnet50-wm-s0", "resnet50-wm-s1"]


@pytest.fixture(scope="module")
def rep(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    params = make_params()
    write_all(root / "results" / "t", params, skip_eval=MISSING_WM + ["resnet50-kp-s1"], skip_log=MISSING_WM)
    out = rp.report(root / "results", root / "paper", params)
    return {"root": root, "res": root / "results" / "t", "pap": root / "paper" / "t", "out": out}


def test_every_figure_is_a_valid_pdf_and_png(rep):
    for stem in FIGS:
        png, pdf = rep["pap"] / "figures" / f"{stem}.png", rep["pap"] / "figures" / f"{stem}.pdf"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.size[0] > 200 and im.size[1] > 100
        assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 1000
    written = {Path(p).name for p in rep["out"]["written"]}
    assert {"summary.csv", "summary.json", "table1.md", "table1.tex", "README.md"} <= written
    leftovers = [p for p in rep["root"].rglob("*.tmp")]
    assert not leftovers, leftovers
    assert (rep["pap"] / "README.md").stat().st_mode & 0o044  # group/other can read (mkstemp gives 0600)


def _row(md: str, rule: str) -> list[str]:
    line = next(ln for ln in md.splitlines() if ln.startswith(f"| {rule} |"))
    return [c.strip() for c in line.strip("|").split("|")][1:]


def test_table_numbers_bold_and_references(rep):
    md = (rep["pap"] / "table1.md").read_text()
    bp, fa, ss, wm, kp = (_row(md, r) for r in ("BP", "FA", "SS", "WM", "KP"))
    # columns: R18 top-1, R18 top-5, R50 top-1, R50 top-5
    assert fa[0].startswith("80.00 ± 0.71 ") and fa[1].startswith("60.00 ± 0.71 ")
    # bold = best rule without weight transport (WM on ResNet-18), never BP although BP is lower
    assert wm[0].startswith("**31.00 ± 0.71**") and wm[1].startswith("**11.00 ± 0.71**")
    assert not bp[0].startswith("**") and "**" not in ss[0] + kp[0] + fa[0]
    assert md.count("**") == 2 * 4  # one bold cell per column
    # published references beside the value, with their numbered source; none -> "no source"
    assert "(ref. 30.24 [1], 30.39 [2])" in bp[0] and "(ref. 10.92 [1])" in bp[1]
    assert "(ref. 85.25 [2])" in fa[0] and "(ref. 34.97 [2])" in ss[0]
    assert "(ref. no source)" in wm[0] and "(ref. no source)" in kp[2]
    assert "[1] PyTorch torchvision" in md and "https://arxiv.org/abs/2108.13446" in md
    tex = (rep["pap"] / "table1.tex").read_text()
    assert r"\textbf{31.00 $\pm$ 0.71}" in tex and r"\begin{tabular}{lcccc}" in tex
    assert r"\multicolumn{2}{c}{ResNet-50}" in tex and "---" in tex


def test_missing_runs_shown_in_table_and_readme(rep):
    md = (rep["pap"] / "table1.md").read_text()
    wm, kp, ss = _row(md, "WM"), _row(md, "KP"), _row(md, "SS")
    assert wm[2].startswith("— ") and wm[3].startswith("— ")  # ResNet-50 WM: no run at all
    # seed 1 was never evaluated: the one seed still counts (and is best), flagged as partial
    assert kp[2].startswith("**25.00 (1/2 seeds)**") and ss[2].startswith("30.00 ± 0.71 ")
    readme = (rep["pap"] / "README.md").read_text()
    for n in MISSING_WM + ["resnet50-kp-s1"]:
        assert f"MISSING evaluation: `{n}`" in readme
    for n in MISSING_WM:
        assert f"MISSING training log: `{n}`" in readme
    assert "MISSING training log: `resnet50-kp-s1`" not in readme
    assert rep["out"]["missing_eval"] == MISSING_WM + ["resnet50-kp-s1"]


def test_readme_verdicts_settings_figures(rep):
    readme = (rep["pap"] / "README.md").read_text()
    assert "```yaml\nexp: t\n" in readme  # the full params, verbatim
    assert "| lr | 0.1 |" in readme and "| weight_decay | 0.0001 |" in readme and "- seeds: 0, 1" in readme
    for stem in FIGS:
        assert f"(figures/{stem}.png)" in readme and f"(figures/{stem}.pdf)" in readme
    v = {x["claim"]: x for x in rep["out"]["verdicts"]}
    # ResNet-18 complete and as in the paper; ResNet-50 lacks WM runs -> the overall claim is undetermined
    assert v["beat"]["per_arch"]["resnet18"]["verdict"] == "SUPPORTED"
    assert v["beat"]["per_arch"]["resnet50"]["verdict"] == "UNDETERMINED"
    assert v["beat"]["verdict"] == v["near_bp"]["verdict"] == "UNDETERMINED"
    assert "ResNet-18: SUPPORTED. top-1 err %: WM 31.00, KP 31.50, FA 80.00, SS 35.00" in readme
    assert "ResNet-50: UNDETERMINED. runs missing for: WM, KP" in readme


def test_summary_json_and_csv(rep):
    s = json.loads((rep["res"] / "summary.json").read_text())
    assert s["resnet18"]["wm"] == pytest.approx(
        {"top1_err": 31.0, "top1_err_std": 0.7071, "top5_err": 11.0, "top5_err_std": 0.7071,
         "n_seeds": 2, "n_expected": 2}, abs=1e-4)
    assert s["resnet50"]["wm"] == {"n_seeds": 0, "n_expected": 2}
    assert s["resnet50"]["kp"] == {"top1_err": 25.0, "top5_err": 5.0, "n_seeds": 1, "n_expected": 2}
    import pandas as pd
    df = pd.read_csv(rep["res"] / "summary.csv")
    assert list(df.columns) == ["arch", "rule", "seed", "epoch", "metric", "value"]
    curves = df[df.metric == "val_top1_err"]
    assert len(curves) == 3 * (20 - 2)  # 3 epochs x runs with a log
    fin = df[(df.metric == "final_val_top1_err") & (df.arch == "resnet18") & (df.rule == "ss")]
    assert sorted(fin.value.round(4)) == [0.345, 0.355] and set(fin.epoch) == {3}
    kp_angle = (df.metric == "angle_deg/layer2.0.conv1") & (df.rule == "kp")
    assert kp_angle.sum() == 3 * 2 * 2  # epochs x archs x seeds
    assert (df.metric == "final_grad_angle_deg/fc").sum() == 20 - 3


def _verdicts(tmp_path, **change):
    top1 = {"resnet18": {**TOP1["resnet18"], **change}}
    top1["resnet18"] = {r: v for r, v in top1["resnet18"].items() if v is not None}
    params = make_params(archs=("resnet18",))
    write_all(tmp_path / "t", params, top1=top1)
    runs = rp.load(tmp_path / "t", params)
    return {v["claim"]: v["verdict"] for v in rp.verdicts(rp.summarise(runs, params), params)}


@pytest.mark.parametrize("change, beat, near", [
    ({}, "SUPPORTED", "SUPPORTED"),
    ({"ss": 0.305}, "NOT SUPPORTED", "SUPPORTED"),  # SS now beats WM
    ({"kp": 0.33}, "SUPPORTED", "NOT SUPPORTED"),  # KP 3 points behind BP
    ({"wm": 0.90, "kp": 0.90}, "NOT SUPPORTED", "NOT SUPPORTED"),
    ({"fa": None}, "UNDETERMINED", "SUPPORTED"),  # no FA run: cannot judge the comparison with FA
    ({"bp": None}, "SUPPORTED", "UNDETERMINED"),
])
def test_verdicts_flip_with_the_numbers(tmp_path, change, beat, near):
    assert _verdicts(tmp_path, **change) == {"beat": beat, "near_bp": near}


def test_repo_published_yaml_every_number_sourced():
    pub = rp.load_published(REPO / "paper" / "published.yaml")
    assert all(c and u.startswith("https://") for _, c, u in pub["sources"])
    refs = pub["refs"]
    assert refs["resnet18", "bp", "top1_err"] == [(30.242, "torchvision"), (30.39, "biotorch")]
    assert refs["resnet50", "bp", "top5_err"] == [(7.138, "torchvision")]
    assert refs["resnet18", "ss", "top1_err"] == [(34.97, "biotorch")]
    assert not any(r in ("wm", "kp") for _, r, _ in refs)  # no unsourced numbers for the paper's own rules


def test_references_only_beside_the_same_dataset(tmp_path):
    params = {**make_params(archs=("resnet18",), rules=("bp",), seeds=(0,)), "data": {"dataset": "digits"}}
    write_run(tmp_path / "results" / "t", "resnet18", "bp", 0, 0.3)
    rp.report(tmp_path / "results", tmp_path / "paper", params)
    md = (tmp_path / "paper" / "t" / "table1.md").read_text()
    assert "(digits)" in md and "(ref. no source)" in md and "30.24" not in md
    assert "Published references are for imagenet; this experiment uses digits" in md


@pytest.mark.parametrize("doc, msg", [
    ({"sources": {"x": {"citation": "X"}}, "results": []}, "needs both 'citation' and 'url'"),
    ({"sources": {}, "results": [{"arch": "resnet18", "rule": "bp", "metric": "top1_err", "value": 1,
                                  "source": "nowhere"}]}, "is not one of"),
])
def test_published_number_without_source_is_refused(tmp_path, doc, msg):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=msg):
        rp.load_published(tmp_path / "p.yaml")


def test_bad_inputs_name_the_file(tmp_path):
    params = make_params(archs=("resnet18",), rules=("bp",), seeds=(0,))
    write_run(tmp_path / "t", "resnet18", "bp", 0, 30.0)  # a percentage where a fraction belongs
    with pytest.raises(ValueError, match=r"resnet18-bp-s0\.json: val_top1_err = 29\.995, expected"):
        rp.load(tmp_path / "t", params)
    (tmp_path / "t" / "eval" / "resnet18-bp-s0.json").write_text(json.dumps({"arch": "resnet50"}))
    with pytest.raises(ValueError, match="arch = 'resnet50' but the file name says 'resnet18'"):
        rp.load(tmp_path / "t", params)
    with pytest.raises(ValueError, match=r"model\.seeds must be a list"):
        rp.report(tmp_path, tmp_path, {"exp": "t", "model": {"archs": [], "rules": []}})
    (tmp_path / "t" / "runs" / "resnet18-bp-s0" / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo')
    (tmp_path / "t" / "eval" / "resnet18-bp-s0.json").unlink()
    with pytest.raises(ValueError, match="metrics.jsonl: line 2: not valid JSON"):
        rp.load(tmp_path / "t", params)


def test_cli_on_an_experiment_with_no_runs(tmp_path, capsys):
    overlay = {"exp": "empty", "model": {"archs": ["resnet18"], "rules": ["bp", "wm"], "seeds": [0]}}
    (tmp_path / "overlay.json").write_text(json.dumps(overlay))  # JSON is YAML
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(prog="dlwt")
    rp.add_subparser(parser.add_subparsers(dest="stage"))
    args = parser.parse_args(["report", "--params", str(repo / "params.yaml"), "--overlay", str(tmp_path / "overlay.json"),
                              "--results", str(tmp_path / "results"), "--paper", str(tmp_path / "paper")])
    assert args.func(args) == 0
    assert "2 evaluations and 2 training logs missing" in capsys.readouterr().out
    pap = tmp_path / "paper" / "empty"
    figs = sorted(p.name for p in (pap / "figures").iterdir())
    assert figs == sorted(f"{s}.{e}" for s in ("fig_error_vs_epoch", "fig_angle_vs_epoch_resnet18",
                                                 "fig_final_alignment") for e in ("pdf", "png"))
    md = (pap / "table1.md").read_text()
    assert _row(md, "WM")[0].startswith("— (ref. no source)") and "**" not in md
    readme = (pap / "README.md").read_text()
    assert "MISSING evaluation: `resnet18-wm-s0`" in readme and "**UNDETERMINED**" in readme
    assert json.loads((tmp_path / "results" / "empty" / "summary.json").read_text()) == {
        "resnet18": {"bp": {"n_seeds": 0, "n_expected": 1}, "wm": {"n_seeds": 0, "n_expected": 1}}}
