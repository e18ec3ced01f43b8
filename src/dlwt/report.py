"""Report stage: the paper's Table 1, figures and a README whose verdicts on the paper's claims are computed.

    dlwt report --params params.yaml --results results --paper paper

Reads, for every arch x rule x seed that params expects, results/<exp>/eval/<arch>-<rule>-s<seed>.json (final
test numbers) and results/<exp>/runs/<arch>-<rule>-s<seed>/metrics.jsonl (per-epoch curves), and writes,
each file atomically (temp file + os.replace), exactly the files of dlwt.layout.report_files:
    results/<exp>/summary.csv     tidy: arch, rule, seed, epoch, metric, value (units as in the inputs: errors
                                  are fractions); per-layer metrics are named '<metric>/<layer>', final
                                  (evaluation) ones start with 'final_'
    results/<exp>/summary.json    per arch x rule: top-1/top-5 error (%) and angle(B, W) (deg; mean over
                                  layers, and per layer) with sample std over seeds, n, flagged runs
    results/<exp>/metrics.json    the flat part DVC shows (`dvc metrics show`): per arch-rule top-1/top-5 mean, sd,
                                  mean angle, seeds
    results/<exp>/curves.csv      epoch, then one column per <arch>-<rule>: top-1 test error (%) mean over seeds
                                  (the DVC plots file: one line per rule and arch)
    paper/<exp>/table1.md, table1.tex, figures/*.pdf|png, README.md (verdicts: see dlwt.claims)
An expected run with no file is shown as missing (a dash in the table, a line in the README), never dropped.
A NaN error in an eval file stops the report with one line naming the file; other NaNs (an angle) are shown
as missing. Runs whose recipe misbehaved are flagged beside their numbers and in the verdicts: first-epoch
mean train loss above ln(classes) (worse than guessing: an early blow-up) or a train loss that rises between
epochs.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import pandas  # noqa: F401  (the report extra's first import: a core install's one line names pandas)
import yaml

from dlwt import claims, dag, figures, layout
from dlwt.atomic import atomic_write
from dlwt.errors import DlwtError
from dlwt.figures import RULE_LABELS, arch_label
from dlwt.run_files import _is_num, curves, expected_runs, load, run_name, tidy
from dlwt.table1 import load_published, tables  # noqa: F401  (load_published: part of this module's API)


def _mean_angle(alignment: dict | None) -> float | None:
    vals = [al["angle_deg"] for al in (alignment or {}).values() if _is_num(al.get("angle_deg"))]
    return statistics.fmean(vals) if vals else None


STATS = ("top1", "top5", "angle", "grad_angle", "angle_change")


def per_seed(runs: dict) -> dict:
    """{arch: {stat: {rule: {seed: value}}}} for stat in STATS: the per-seed numbers the summary and the claims
    use. top1/top5: final test error (%); angle / grad_angle: final angle(B, W) / angle(rule update, backprop
    gradient), mean over layers (deg); angle_change: mean angle(B, W) after the last epoch minus after the first."""
    out: dict = {}

    def put(a, stat, r, s, v):
        if v is not None:
            out.setdefault(a, {k: {} for k in STATS})[stat].setdefault(r, {})[s] = v

    for (a, r, s), ev in runs["evals"].items():
        put(a, "top1", r, s, 100 * ev["val_top1_err"])
        put(a, "top5", r, s, 100 * ev["val_top5_err"])
        put(a, "angle", r, s, _mean_angle(ev.get("alignment")))
        grads = [v for v in (ev.get("gradient_alignment") or {}).values() if _is_num(v)]
        put(a, "grad_angle", r, s, statistics.fmean(grads) if grads else None)
    for (a, r, s), log in runs["metrics"].items():
        if len(log) > 1:
            first, last = _mean_angle(log[0].get("alignment")), _mean_angle(log[-1].get("alignment"))
            put(a, "angle_change", r, s, None if first is None or last is None else last - first)
    return out


def n_classes(params: dict) -> int | None:
    """Classes of the experiment's data: known per source, else the extracted tree's classes.json."""
    from dlwt.data.sources import SOURCES

    d = params.get("data") or {}
    known = SOURCES[d["source"]].classes(d) if d.get("source") in SOURCES else None
    if known is not None:
        return known
    p = Path(d.get("root", "data")) / str(d.get("dataset", "")) / "images" / "classes.json"
    return len(json.loads(p.read_text())) if p.is_file() else None


def shows_top5(params: dict) -> bool:
    """Top-5 error is shown where it says something: more than 10 classes (or an unknown count). With 10
    classes, 5 guesses cover half of them: the demo's top-5 is ~1% for every rule."""
    classes = n_classes(params)
    return classes is None or classes > 10


def run_flags(log: list[dict], classes: int | None) -> list[str]:
    """Why a run's recipe looks broken: a first epoch worse than guessing, a train loss that rises."""
    losses = [(row["epoch"], row.get("train_loss")) for row in log]
    flags = [f"train loss not finite at epoch {e}" for e, x in losses if not _is_num(x)]
    losses = [(e, x) for e, x in losses if _is_num(x)]
    if losses and classes and losses[0][1] > math.log(classes):
        flags.append(f"first-epoch train loss {losses[0][1]:.2f} > ln({classes}) = {math.log(classes):.2f}")
    rises = [e for (_, prev), (e, x) in zip(losses, losses[1:]) if x > prev]
    if rises:
        flags.append("train loss rose at epoch " + ", ".join(str(e) for e in rises))
    return flags


def flags(runs: dict, params: dict) -> dict:
    """{(arch, rule, seed): [reason, ...]} for the runs whose recipe misbehaved."""
    classes = n_classes(params)
    return {k: f for k, log in runs["metrics"].items() if (f := run_flags(log, classes))}


def _mean_std(cell: dict, key: str, vals: list[float], digits: int = 4) -> None:
    if vals:
        cell[key] = round(statistics.fmean(vals), digits)
    if len(vals) > 1:
        cell[f"{key}_std"] = round(statistics.stdev(vals), digits)


def summarise(runs: dict, params: dict, flagged: dict | None = None) -> dict:
    """{arch: {rule: {top1_err, top5_err, angle_deg, grad_angle_deg (each with _std), angle_deg_per_layer,
    n_seeds, n_expected, n_flagged}}}: errors in %, angles in degrees (mean over layers, then mean and sample
    std over seeds; per layer: the final angle, mean over seeds). Keys without data are absent, so DVC only
    ever sees numbers."""
    n_exp = len(params["model"]["seeds"])
    stats, flagged = per_seed(runs), flagged or {}
    out = {}
    for a in params["model"]["archs"]:
        for r in params["model"]["rules"]:
            st = stats.get(a, {})
            cell = {"n_seeds": len(st.get("top1", {}).get(r, {})), "n_expected": n_exp}
            for key, name in (("top1", "top1_err"), ("top5", "top5_err"), ("angle", "angle_deg"),
                              ("grad_angle", "grad_angle_deg")):
                _mean_std(cell, name, list(st.get(key, {}).get(r, {}).values()))
            layers: dict = {}
            for (ea, er, _), ev in runs["evals"].items():
                if (ea, er) == (a, r):
                    for ly, al in (ev.get("alignment") or {}).items():
                        if _is_num(al.get("angle_deg")):
                            layers.setdefault(ly, []).append(al["angle_deg"])
            if layers:
                cell["angle_deg_per_layer"] = {ly: round(statistics.fmean(v), 3) for ly, v in layers.items()}
            cell["n_flagged"] = sum(1 for (fa, fr, _) in flagged if (fa, fr) == (a, r))
            out.setdefault(a, {})[r] = cell
    return out


def verdicts(runs: dict, params: dict, flagged: dict | None = None) -> list[dict]:
    """The paper's claims checked on every seed (see dlwt.claims); each arch's verdict names the flagged
    runs it rests on."""
    stats = per_seed(runs)
    stats = {a: stats.get(a, {}) for a in params["model"]["archs"]}
    out = claims.check(stats, params["model"]["rules"])
    for v in out:
        for a, p in v["per_arch"].items():
            rules = claims.needed(v["claim"])
            p["flagged"] = [run_name(fa, fr, fs) for (fa, fr, fs) in sorted(flagged or {})
                            if fa == a and fr in rules]
    return out


def _settings(params: dict, keys: list[str]) -> list[str]:
    m = params["model"]
    lines = [f"- experiment: `{params['exp']}`", f"- architectures: {', '.join(m['archs'])}",
             f"- rules: {', '.join(m['rules'])}", f"- seeds: {', '.join(str(s) for s in m['seeds'])}",
             "", "| train setting | value |", "|---|---|"]
    lines += [f"| {k[len('train.'):]} | {v} |" for k, v in dag.pick(params, keys).items() if k.startswith("train.")]
    return lines


def _fmt(x, spec=".2f") -> str:
    return "—" if x is None else format(x, spec)


def seed_table(runs: dict, params: dict, flagged: dict) -> list[str]:
    """Per arch, one row per rule and seed: the numbers every verdict is computed from, flags beside them."""
    stats, out = per_seed(runs), []
    cols = {"top1": "top-1 err (%)", **({"top5": "top-5 err (%)"} if shows_top5(params) else {}),
            "angle": "angle(B, W) (deg)", "grad_angle": "angle(update, BP grad) (deg)"}
    for a in params["model"]["archs"]:
        st = stats.get(a, {})
        out += [f"**{arch_label(a)}**", "", "| Rule | seed | " + " | ".join(cols.values()) + " | recipe check |",
                "|---|---|" + "---|" * len(cols) + "---|"]
        for r in params["model"]["rules"]:
            for s in params["model"]["seeds"]:
                vals = [st.get(k, {}).get(r, {}).get(int(s)) for k in cols]
                why = flagged.get((a, r, int(s)))
                check = "† " + "; ".join(why) if why else "ok" if (a, r, int(s)) in runs["metrics"] else "—"
                out.append(f"| {RULE_LABELS.get(r, r)} | {s} | " + " | ".join(_fmt(v) for v in vals) +
                           f" | {check} |")
        out.append("")
    return out


def claims_md(vs: list[dict]) -> list[str]:
    out = [f"Each claim is checked on every seed: differences are paired by seed (same initial W and data "
           f"order), and a verdict is SUPPORTED or CONTRADICTED only when the {claims.CONFIDENCE:.0%} "
           "t-interval of the mean lies on one side of the claim's threshold; otherwise, and always with one "
           "seed, INCONCLUSIVE. A claim made of several comparisons needs all of them.", ""]
    for v in vs:
        out.append(f"- **{v['text']}**: **{v['verdict']}**")
        for a, p in v["per_arch"].items():
            out.append(f"  - {arch_label(a)}: {p['verdict']}" + (f" ({p['why']})" if p.get("why") else ""))
            for c in p["comparisons"]:
                per = c.get("diffs", c.get("values", {}))
                seeds = ", ".join(f"s{s} {x:+.2f}" for s, x in per.items())
                out.append(f"    - {c['verdict']}: {c['text']}" + (f"; per seed: {seeds}" if seeds else ""))
            if p.get("flagged"):
                out.append(f"    - † rests on flagged runs: {', '.join(p['flagged'])}")
    return out


def read_notes(path: str | None) -> list[str]:
    """report.notes: the Markdown the README prints under its title, as lines (none without the key)."""
    if not path:
        return []
    try:
        return [Path(path).read_text(encoding="utf-8").rstrip(), ""]
    except (OSError, UnicodeDecodeError) as e:
        raise DlwtError(f"report.notes: cannot read {path} ({e.strerror if isinstance(e, OSError) else e}); "
                        "fix the path in params or remove the key") from None


def readme(params: dict, table_md: str, runs: dict, vs: list[dict], figs: list[str],
           flagged: dict | None = None, notes: list[str] = ()) -> str:
    exp, flagged = params["exp"], flagged or {}
    out = [f"# Results of experiment `{exp}`", "",
           f"Generated by `dlwt report` from `results/{exp}/`: edit params and rerun the pipeline; "
           "do not edit this file by hand.", "", *notes, "## The paper's claims, checked against these numbers", "",
           *claims_md(vs), "", "## Table 1", "", table_md, "## Every run", "", *seed_table(runs, params, flagged),
           "## Missing runs", ""]
    miss_ev, miss_mt = runs["missing_eval"], runs["missing_metrics"]
    if not (miss_ev or miss_mt):
        n = len(expected_runs(params))
        out.append(f"None: all {n} expected runs have an evaluation and a metrics.jsonl.")
    out += [f"- MISSING evaluation: `{n}` (no eval/{n}.json)" for n in miss_ev]
    out += [f"- MISSING training log: `{n}` (no runs/{n}/metrics.jsonl)" for n in miss_mt]
    out += ["", "## Figures", ""]
    files = layout.report_files(params)
    for stem in figs:
        png, pdf = (files[f"{stem}.{fmt}"].relative_to(files["README.md"].parent) for fmt in ("png", "pdf"))
        out += [f"![{stem}]({png})", f"([PDF]({pdf}))", ""]
    # only the keys the results depend on (dlwt.dag.report_keys): an operational key (workers, device) cannot
    # change them, so printing it would leave this file stale when it is edited
    keys = dag.report_keys(params)
    out += ["## Settings (from params)", "", *_settings(params, keys), "",
            "<details><summary>Every params key the results depend on</summary>", "", "```yaml",
            yaml.safe_dump(dag.nested(params, keys), sort_keys=False).rstrip(), "```", "", "</details>", ""]
    return "\n".join(out)


def check_params(params: dict) -> None:
    """The few keys this stage needs (the full schema is checked upstream): a clear error, not a KeyError."""
    if not isinstance(params.get("exp"), str):
        raise DlwtError("params: 'exp' must be a string naming the experiment")
    for key in ("archs", "rules", "seeds"):
        if not isinstance((params.get("model") or {}).get(key), list):
            raise DlwtError(f"params: model.{key} must be a list")


def dvc_metrics(summary: dict) -> dict:
    """The flat summary DVC shows (`dvc metrics show`, `dvc exp show`): per arch-rule top-1/top-5 error (%) mean
    and sd over seeds, mean angle(B, W) (deg), seeds; the per-layer numbers stay in summary.json."""
    keep = ("top1_err", "top1_err_std", "top5_err", "top5_err_std", "angle_deg", "n_seeds")
    return {f"{a}-{r}": {k: cell[k] for k in keep if k in cell} for a, rules in summary.items()
            for r, cell in rules.items()}


def report(results_dir: Path, paper_dir: Path, params: dict) -> dict:
    """Write every report file of params['exp'] (exactly layout.report_files); return the summary, verdicts,
    missing runs and paths."""
    check_params(params)
    from dlwt.params import complete

    params = complete(params)  # the schema's defaults for what a caller's params leave out (report.dpi, data.*)
    exp = params["exp"]
    paths = layout.report_files(params, results_dir, paper_dir)
    pub = (params.get("report") or {}).get("published")  # relative to the working directory (repo root)
    published = load_published(Path(pub) if pub else None)
    notes = read_notes(params["report"]["notes"])  # before any figure: a wrong path fails in a second
    dataset = (params.get("data") or {}).get("dataset")
    if dataset and published["dataset"] and dataset != published["dataset"]:
        # ImageNet references beside a demo/CI run on other data would invite a meaningless comparison
        published = {**published, "refs": {}, "sources": [],
                     "note": f"Published references are for {published['dataset']}; this experiment uses "
                             f"{dataset}, so none are shown."}
    runs = load(layout.exp_dir(exp, results_dir), params)
    df = tidy(runs)
    flagged = flags(runs, params)
    summary = summarise(runs, params, flagged)
    vs = verdicts(runs, params, flagged)
    table_md, table_tex = tables(summary, published, params, top5=shows_top5(params))
    files = {"summary.csv": df.to_csv(index=False, float_format="%.7g"),  # 7 digits: float32 precision
             "summary.json": json.dumps(summary, indent=2) + "\n",
             "metrics.json": json.dumps(dvc_metrics(summary), indent=2) + "\n",
             "curves.csv": curves(df, params).to_csv(index=False, float_format="%.7g"),
             "table1.md": table_md, "table1.tex": table_tex}
    figs = figures.draw_all(df, params)
    for stem, fig in figs.items():
        files.update({f"{stem}.{fmt}": data for fmt, data in figures.render(fig, params["report"]["dpi"]).items()})
    files["README.md"] = readme(params, table_md, runs, vs, list(figs), flagged, notes)
    if set(files) != set(paths):  # a programming error: layout.report_files is the declaration
        raise DlwtError(f"report: wrote {sorted(set(files) ^ set(paths))} against layout.report_files")
    for what, data in files.items():
        atomic_write(paths[what], data)
    return {"exp": exp, "summary": summary, "verdicts": vs, "flagged": flagged, "missing_eval": runs["missing_eval"],
            "missing_metrics": runs["missing_metrics"], "written": [str(paths[w]) for w in files]}


def main(args) -> int:
    from dlwt.params import load
    params = load(args.params, args.overlay)
    out = report(Path(args.results), Path(args.paper), params)
    print(f"report: wrote {len(out['written'])} files for {out['exp']}; "
          f"{len(out['missing_eval'])} evaluations and {len(out['missing_metrics'])} training logs missing")
    for v in out["verdicts"]:
        print(f"  {v['verdict']:>12}: {v['text']}")
    for (a, r, s), why in out["flagged"].items():
        print(f"  flagged {run_name(a, r, s)}: {'; '.join(why)}")
    return 0


def add_subparser(sub) -> None:
    p = sub.add_parser("report", help="Table 1, figures and README (with verdicts) from an experiment",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    from dlwt.params import add_arguments

    add_arguments(p)
    p.add_argument("--results", default=layout.RESULTS, help="results root (reads and writes results/<exp>/)")
    p.add_argument("--paper", default=layout.PAPER, help="paper root (writes paper/<exp>/)")
    p.set_defaults(func=main)
