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
FIGS = ["fig_error_vs_epoch", "fig_final_error", "fig_angle_vs_epoch_resnet18", "fig_angle_vs_epoch_resnet50",
        "fig_final_alignment", "fig_grad_alignment_vs_epoch", "fig_kp_mechanism", "fig_wm_mechanism"]


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
                                    "norm_ratio": 1.0} for i, ly in enumerate(layers)},
                 "grad_alignment": {ly: ANGLE[rule] / 2 / e + i for i, ly in enumerate(layers)}}
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
    assert fa[0] == "80.00 ± 0.71 (ref. 85.25 [2])" and fa[1] == "60.00 ± 0.71"  # no reference: ours alone
    # bold = best rule without weight transport (WM on ResNet-18), never BP although BP is lower
    assert wm[0].startswith("**31.00 ± 0.71**") and wm[1].startswith("**11.00 ± 0.71**")
    assert not bp[0].startswith("**") and "**" not in ss[0] + kp[0] + fa[0]
    assert md.count("**") == 2 * 4  # one bold cell per column
    # published references beside the value, with their numbered source; a cell with none shows only ours
    assert "(ref. 30.24 [1], 30.39 [2])" in bp[0] and "(ref. 10.92 [1])" in bp[1]
    assert "(ref. 85.25 [2])" in fa[0] and "(ref. 34.97 [2])" in ss[0]
    assert "(ref." not in wm[0] + kp[2] and "no source" not in md
    assert "[1] PyTorch torchvision" in md and "https://arxiv.org/abs/2108.13446" in md
    tex = (rep["pap"] / "table1.tex").read_text()
    assert r"\textbf{31.00 $\pm$ 0.71}" in tex and r"\begin{tabular}{lcccc}" in tex
    assert r"\multicolumn{2}{c}{ResNet-50}" in tex and "---" in tex


def test_missing_runs_shown_in_table_and_readme(rep):
    md = (rep["pap"] / "table1.md").read_text()
    wm, kp, ss = _row(md, "WM"), _row(md, "KP"), _row(md, "SS")
    assert wm[2] == "—" and wm[3] == "—"  # ResNet-50 WM: no run at all (and no published number)
    # seed 1 was never evaluated: the one seed still counts (and is best), flagged as partial
    assert kp[2].startswith("**25.00 (1/2 seeds)**") and ss[2].startswith("30.00 ± 0.71")
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
    # ResNet-18 complete and as in the paper (every seed shifts all rules alike: the paired differences are
    # exact); ResNet-50 lacks WM runs and one KP seed -> inconclusive, so the claim overall is too
    assert v["beat"]["per_arch"]["resnet18"]["verdict"] == "SUPPORTED"
    assert v["beat"]["per_arch"]["resnet50"]["verdict"] == "INCONCLUSIVE"
    assert v["beat"]["verdict"] == v["near_bp"]["verdict"] == "INCONCLUSIVE"
    assert "    - SUPPORTED: WM - FA (top-1 err, points): -49.00 [-49.00, -49.00] (n=2" in readme
    assert "per seed: s0 -49.00, s1 -49.00" in readme
    assert "WM - FA (top-1 err, points): n=0 (no finished runs to compare)" in readme
    assert "KP - FA (top-1 err, points): -49.50 (n=1: one seed gives no interval)" in readme


def test_summary_json_and_csv(rep):
    s = json.loads((rep["res"] / "summary.json").read_text())
    wm = s["resnet18"]["wm"]
    assert wm.pop("angle_deg_per_layer") == {ly: 10.0 for ly in LAYERS["resnet18"]}
    assert wm == pytest.approx(
        {"top1_err": 31.0, "top1_err_std": 0.7071, "top5_err": 11.0, "top5_err_std": 0.7071,
         "angle_deg": 10.0, "angle_deg_std": 0.0, "grad_angle_deg": 7.0, "grad_angle_deg_std": 0.0,
         "n_seeds": 2, "n_expected": 2, "n_flagged": 0}, abs=1e-4)
    assert s["resnet50"]["wm"] == {"n_seeds": 0, "n_expected": 2, "n_flagged": 0}
    assert s["resnet50"]["kp"]["top1_err"] == 25.0 and "top1_err_std" not in s["resnet50"]["kp"]
    # the DVC plots file: one line (column) per arch and rule, mean over seeds, in %
    import pandas as pd
    cv = pd.read_csv(rep["res"] / "curves.csv")
    assert list(cv.columns) == ["epoch"] + [f"{a}-{r}" for a in LAYERS for r in rp.figures.RULE_ORDER]
    assert list(cv["epoch"]) == [1, 2, 3] and cv["resnet18-wm"].tolist() == pytest.approx([51, 41, 31])
    assert cv["resnet50-wm"].isna().all()
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
    assert (df.metric == "grad_angle_deg/fc").sum() == 3 * (20 - 2)  # per epoch, from metrics.jsonl


def test_figures_carry_no_timestamp(tmp_path):
    # the same results drawn twice give the same bytes: a rerun of the demo leaves `git status` clean
    params = make_params(archs=("resnet18",), rules=("bp", "wm"), seeds=(0, 1))
    write_all(tmp_path / "results" / "t", params)
    a = {Path(p).name: Path(p).read_bytes() for p in rp.report(tmp_path / "results", tmp_path / "paper", params)["written"]}
    b = {Path(p).name: Path(p).read_bytes() for p in rp.report(tmp_path / "results", tmp_path / "paper", params)["written"]}
    assert a == b and b"CreationDate" not in a["fig_final_error.pdf"] and b"Software" not in a["fig_final_error.png"]


# per-seed top-1 error (%) for three seeds: WM/KP ~3 points behind BP's 30, FA/SS ~10 points behind
SEEDS3 = {"bp": [30.0, 31.0, 29.5], "fa": [40.0, 41.5, 39.0], "ss": [38.0, 39.0, 37.5],
          "wm": [31.0, 32.2, 30.4], "kp": [31.5, 32.0, 30.8]}


def _stats(errs, angle=None, change=None):
    top1 = {r: dict(enumerate(v)) for r, v in errs.items()}
    return {"a": {"top1": top1, "angle": {"wm": dict(enumerate(angle or [8.0, 9.0, 8.5]))},
                  "angle_change": {"kp": dict(enumerate(change or [-20.0, -22.0, -19.0]))}}}


def _check(errs, **kw):
    return {v["claim"]: v["verdict"] for v in rp.claims.check(_stats(errs, **kw), list(errs))}


def test_verdicts_supported_contradicted_inconclusive_from_fixed_numbers():
    assert _check(SEEDS3) == {"beat": "SUPPORTED", "near_bp": "SUPPORTED", "wm_aligned": "SUPPORTED",
                              "kp_converges": "SUPPORTED"}
    # SS now beats WM on every seed, KP is 5 points behind BP, WM's angle is 30 degrees, KP's angle grows
    worse = {**SEEDS3, "ss": [29.0, 30.0, 28.5], "kp": [35.0, 36.2, 34.4]}
    assert _check(worse, angle=[30.0, 31.0, 29.0], change=[5.0, 6.0, 4.0]) == {
        "beat": "CONTRADICTED", "near_bp": "CONTRADICTED", "wm_aligned": "CONTRADICTED",
        "kp_converges": "CONTRADICTED"}
    # KP's gap to BP straddles the 2-point limit: +1.0, +3.0, +1.6 -> interval [-0.7, 4.1]
    straddle = {**SEEDS3, "kp": [31.0, 34.0, 31.1]}
    assert _check(straddle)["near_bp"] == "INCONCLUSIVE"
    one_seed = {r: v[:1] for r, v in SEEDS3.items()}  # one seed never gives a verdict
    assert set(_check(one_seed, angle=[8.0], change=[-20.0]).values()) == {"INCONCLUSIVE"}


def test_noise_moves_a_verdict_to_inconclusive():
    rng = __import__("random").Random(0)
    assert _check(SEEDS3)["beat"] == "SUPPORTED"
    # the same means, but each seed of WM now +- 15 points: the interval of WM - FA covers 0
    noisy = {**SEEDS3, "wm": [v + d for v, d in zip(SEEDS3["wm"], (-15.0, 15.0, 0.0))]}
    assert _check(noisy)["beat"] == "INCONCLUSIVE"
    jitter = [8.0 + rng.gauss(0, 8.0) for _ in range(3)]  # WM's angle, mean ~8 but spread over seeds
    assert _check(SEEDS3, angle=jitter)["wm_aligned"] == "INCONCLUSIVE"


def test_t_interval_matches_the_textbook():
    iv = rp.claims.interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2) = 4.303
    assert iv["mean"] == 2.0 and iv["std"] == 1.0
    assert iv["lo"] == pytest.approx(2 - 4.3027 / 3 ** 0.5, abs=1e-3)
    assert rp.claims.interval([5.0])["lo"] is None


def test_verdicts_end_to_end_from_run_files(tmp_path):
    params = make_params(archs=("resnet18",), seeds=(0, 1, 2))
    for r, errs in SEEDS3.items():
        for s, e in enumerate(errs):
            write_run(tmp_path / "t", "resnet18", r, s, e / 100 - (0.01 * s - 0.005))
    runs = rp.load(tmp_path / "t", params)
    v = {x["claim"]: x["verdict"] for x in rp.verdicts(runs, params)}
    # the logged angles (ANGLE / epoch) fall over training; WM's final angle 10 < 12 on every seed
    assert v == {"beat": "SUPPORTED", "near_bp": "SUPPORTED", "wm_aligned": "SUPPORTED",
                 "kp_converges": "SUPPORTED"}


def test_nan_in_an_eval_file_is_one_line_and_a_nan_angle_is_missing(tmp_path):
    params = make_params(archs=("resnet18",), rules=("bp", "wm"), seeds=(0,))
    for r in ("bp", "wm"):
        write_run(tmp_path / "results" / "t", "resnet18", r, 0, 0.3)
    ev_path = tmp_path / "results" / "t" / "eval" / "resnet18-wm-s0.json"
    ev = json.loads(ev_path.read_text())
    ev["alignment"]["fc"]["angle_deg"] = float("nan")  # an all-zero B: the angle is undefined
    ev["gradient_alignment"]["conv1"] = float("nan")
    ev_path.write_text(json.dumps(ev))  # Python writes NaN, as json.dumps does in the evaluate stage
    out = rp.report(tmp_path / "results", tmp_path / "paper", params)
    assert out["summary"]["resnet18"]["wm"]["angle_deg_per_layer"].keys() == set(LAYERS["resnet18"]) - {"fc"}
    ev["val_top1_err"] = float("nan")
    ev_path.write_text(json.dumps(ev))
    with pytest.raises(rp.DlwtError, match=r"resnet18-wm-s0\.json: val_top1_err is NaN: the run diverged") as e:
        rp.report(tmp_path / "results", tmp_path / "paper", params)
    assert "\n" not in str(e.value)


def test_runs_with_a_broken_recipe_are_flagged(tmp_path):
    params = {**make_params(archs=("resnet18",), rules=("bp", "fa"), seeds=(0,)),
              "data": {"source": "fashion-mnist", "dataset": "fashion-mnist"}}
    for r in ("bp", "fa"):
        write_run(tmp_path / "results" / "t", "resnet18", r, 0, 0.3)
    log = tmp_path / "results" / "t" / "runs" / "resnet18-fa-s0" / "metrics.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    rows[0]["train_loss"], rows[2]["train_loss"] = 7.5, 1.2  # 7.5 > ln 10; epoch 3 above epoch 2's 1.0
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = rp.report(tmp_path / "results", tmp_path / "paper", params)
    assert out["flagged"] == {("resnet18", "fa", 0): ["first-epoch train loss 7.50 > ln(10) = 2.30",
                                                       "train loss rose at epoch 3"]}
    assert out["summary"]["resnet18"]["fa"]["n_flagged"] == 1 and out["summary"]["resnet18"]["bp"]["n_flagged"] == 0
    md = (tmp_path / "paper" / "t" / "table1.md").read_text()
    assert _row(md, "FA")[0].startswith("**29.50 †**") and "†" not in _row(md, "BP")[0]
    readme = (tmp_path / "paper" / "t" / "README.md").read_text()
    assert "| FA | 0 | 29.50 |" in readme and "† first-epoch train loss 7.50 > ln(10) = 2.30" in readme
    assert "rests on flagged runs: resnet18-fa-s0" in readme


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
    assert "(digits)" in md and "(ref." not in md and "30.24" not in md  # no reference bracket in any cell
    assert "Published references are for imagenet; this experiment uses digits" in md


@pytest.mark.parametrize("text, msg", [
    ("sources: {x: [1,\n", r"p\.yaml: not valid YAML \(line"),
    ("- 1\n- 2\n", "expected a mapping with 'sources'"),
    ("sources: [a]\nresults: []\n", "expected a mapping with 'sources'"),
    ("sources: {}\nresults: [30.2]\n", "expected a mapping with 'sources'"),
])
def test_a_malformed_published_file_is_one_line(tmp_path, text, msg):
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(rp.DlwtError, match=msg):
        rp.load_published(tmp_path / "p.yaml")


@pytest.mark.parametrize("doc, msg", [
    ({"sources": {"x": {"citation": "X"}}, "results": []}, "needs both 'citation' and 'url'"),
    ({"sources": {}, "results": [{"arch": "resnet18", "rule": "bp", "metric": "top1_err", "value": 1,
                                  "source": "nowhere"}]}, "is not one of"),
])
def test_published_number_without_source_is_refused(tmp_path, doc, msg):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(rp.DlwtError, match=msg):
        rp.load_published(tmp_path / "p.yaml")


def test_bad_inputs_name_the_file(tmp_path):
    params = make_params(archs=("resnet18",), rules=("bp",), seeds=(0,))
    write_run(tmp_path / "t", "resnet18", "bp", 0, 30.0)  # a percentage where a fraction belongs
    with pytest.raises(rp.DlwtError, match=r"resnet18-bp-s0\.json: val_top1_err = 29\.995, expected"):
        rp.load(tmp_path / "t", params)
    (tmp_path / "t" / "eval" / "resnet18-bp-s0.json").write_text(json.dumps({"arch": "resnet50"}))
    with pytest.raises(rp.DlwtError, match="arch = 'resnet50' but the file name says 'resnet18'"):
        rp.load(tmp_path / "t", params)
    (tmp_path / "t" / "eval" / "resnet18-bp-s0.json").write_text("[0.3, 0.1]")
    with pytest.raises(rp.DlwtError, match=r"resnet18-bp-s0\.json: holds a JSON list, not the object"):
        rp.load(tmp_path / "t", params)
    with pytest.raises(rp.DlwtError, match=r"model\.seeds must be a list"):
        rp.report(tmp_path, tmp_path, {"exp": "t", "model": {"archs": [], "rules": []}})
    (tmp_path / "t" / "runs" / "resnet18-bp-s0" / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo')
    (tmp_path / "t" / "eval" / "resnet18-bp-s0.json").unlink()
    with pytest.raises(rp.DlwtError, match="metrics.jsonl: line 2: not valid JSON"):
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
    assert figs == sorted(f"{s}.{e}" for s in ("fig_error_vs_epoch", "fig_final_error", "fig_angle_vs_epoch_resnet18",
                                                 "fig_final_alignment", "fig_grad_alignment_vs_epoch",
                                                 "fig_wm_mechanism")  # wm runs: its mechanism; no kp: none
                          for e in ("pdf", "png"))
    md = (pap / "table1.md").read_text()
    assert _row(md, "WM")[0] == "—" and "**" not in md
    readme = (pap / "README.md").read_text()
    assert "MISSING evaluation: `resnet18-wm-s0`" in readme and "**INCONCLUSIVE**" in readme
    assert json.loads((tmp_path / "results" / "empty" / "summary.json").read_text()) == {
        "resnet18": {"bp": {"n_seeds": 0, "n_expected": 1, "n_flagged": 0},
                     "wm": {"n_seeds": 0, "n_expected": 1, "n_flagged": 0}}}


def test_report_notes_are_printed_under_the_title_and_a_missing_file_is_one_line(tmp_path):
    params = make_params(archs=("resnet18",), rules=("bp",), seeds=(0,))
    write_run(tmp_path / "results" / "t", "resnet18", "bp", 0, 0.3)
    (tmp_path / "notes.md").write_text("How this recipe was chosen: by measurement.\n")
    params["report"]["notes"] = str(tmp_path / "notes.md")
    rp.report(tmp_path / "results", tmp_path / "paper", params)
    md = (tmp_path / "paper" / "t" / "README.md").read_text()
    assert md.index("How this recipe was chosen") < md.index("## The paper's claims")
    params["report"]["notes"] = str(tmp_path / "gone.md")
    with pytest.raises(rp.DlwtError, match=r"report.notes: cannot read .*gone.md .*fix the path"):
        rp.report(tmp_path / "results", tmp_path / "paper", params)
