"""Report stage: the paper's Table 1, figures and a README whose verdicts on the paper's claims are computed.

    dlwt report --params params.yaml --results results --paper paper

Reads, for every arch x rule x seed that params expects, results/<exp>/eval/<arch>-<rule>-s<seed>.json (final
test numbers) and results/<exp>/runs/<arch>-<rule>-s<seed>/metrics.jsonl (per-epoch curves), and writes,
each file atomically (temp file + os.replace):
    results/<exp>/summary.csv     tidy: arch, rule, seed, epoch, metric, value (units as in the inputs: errors
                                  are fractions); per-layer metrics are named '<metric>/<layer>', final
                                  (evaluation) ones start with 'final_'
    results/<exp>/summary.json    top-1/top-5 error (%) per arch x rule: mean, sample std over seeds, n
                                  (the DVC metrics file)
    results/<exp>/curves.csv      run, arch, rule, seed, epoch, losses and errors per epoch (the DVC plots file)
    paper/<exp>/table1.md, table1.tex, figures/*.pdf|png, README.md
An expected run with no file is shown as missing (a dash in the table, a line in the README), never dropped.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import pandas as pd
import yaml

from dlwt import figures
from dlwt.figures import RULE_LABELS, arch_label
from dlwt.provenance import atomic_write

NO_WT = ("fa", "ss", "wm", "kp")  # rules without weight transport: the bold cell is the best of these
WITHIN_POINTS = 2.0  # the paper: WM and KP come "within a point or two" of BP's top-1 error
COLUMNS = ["arch", "rule", "seed", "epoch", "metric", "value"]


def run_name(arch: str, rule: str, seed: int) -> str:
    return f"{arch}-{rule}-s{seed}"


def expected_runs(params: dict) -> list[tuple[str, str, int]]:
    m = params["model"]
    return [(a, r, int(s)) for a in m["archs"] for r in m["rules"] for s in m["seeds"]]


def _fraction(path: Path, key: str, x) -> float:
    if not isinstance(x, (int, float)) or not 0.0 <= x <= 1.0:
        raise ValueError(f"{path}: {key} = {x!r}, expected an error fraction in [0, 1]")
    return float(x)


def read_eval(path: Path, arch: str, rule: str, seed: int) -> dict:
    try:
        ev = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    for key, want in (("arch", arch), ("rule", rule), ("seed", seed)):
        if ev.get(key) != want:
            raise ValueError(f"{path}: {key} = {ev.get(key)!r} but the file name says {want!r}")
    for key in ("val_top1_err", "val_top5_err"):
        _fraction(path, key, ev.get(key))
    return ev


def read_metrics(path: Path) -> list[dict]:
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: line {i}: not valid JSON ({e})") from None
        if not isinstance(row.get("epoch"), int):
            raise ValueError(f"{path}: line {i}: missing integer 'epoch'")
        if "val_top1_err" in row:
            _fraction(path, f"line {i}: val_top1_err", row["val_top1_err"])
        rows.append(row)
    return rows


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def load(exp_dir: Path, params: dict) -> dict:
    """Every expected run's eval dict and metrics rows, and the names of those without one."""
    out = {"evals": {}, "metrics": {}, "missing_eval": [], "missing_metrics": []}
    for a, r, s in expected_runs(params):
        name = run_name(a, r, s)
        ev, mt = exp_dir / "eval" / f"{name}.json", exp_dir / "runs" / name / "metrics.jsonl"
        if ev.is_file():
            out["evals"][a, r, s] = read_eval(ev, a, r, s)
        else:
            out["missing_eval"].append(name)
        if mt.is_file():
            out["metrics"][a, r, s] = read_metrics(mt)
        else:
            out["missing_metrics"].append(name)
    return out


def tidy(runs: dict) -> pd.DataFrame:
    """One row per (run, epoch, metric): the per-epoch log, then the final evaluation (metrics 'final_*')."""
    rows = []
    for (a, r, s), log in runs["metrics"].items():
        for row in log:
            ep = row["epoch"]
            rows += [(a, r, s, ep, k, float(v)) for k, v in row.items() if k != "epoch" and _is_num(v)]
            for layer, al in (row.get("alignment") or {}).items():
                rows += [(a, r, s, ep, f"{k}/{layer}", float(v)) for k, v in al.items() if _is_num(v)]
    for (a, r, s), ev in runs["evals"].items():
        ep = ev.get("epoch")
        rows += [(a, r, s, ep, f"final_{k}", float(v)) for k, v in ev.items()
                 if k not in ("seed", "epoch") and _is_num(v)]
        for layer, al in (ev.get("alignment") or {}).items():
            rows += [(a, r, s, ep, f"final_{k}/{layer}", float(v)) for k, v in al.items() if _is_num(v)]
        for layer, v in (ev.get("gradient_alignment") or {}).items():
            rows.append((a, r, s, ep, f"final_grad_angle_deg/{layer}", float(v)))
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype({"epoch": "Int64"})  # nullable: an eval file may lack 'epoch'


def curves(df: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch curves, one column per metric and a `run` column: the file `dvc plots` draws."""
    keep = ["train_loss", "val_loss", "val_top1_err", "val_top5_err"]
    per_epoch = df[df["metric"].isin(keep)]
    if per_epoch.empty:
        return pd.DataFrame(columns=["run", "arch", "rule", "seed", "epoch", *keep])
    wide = per_epoch.pivot_table(index=["arch", "rule", "seed", "epoch"], columns="metric", values="value")
    wide = wide.reset_index()
    wide.insert(0, "run", [run_name(a, r, s) for a, r, s in zip(wide["arch"], wide["rule"], wide["seed"])])
    return wide


def summarise(runs: dict, params: dict) -> dict:
    """{arch: {rule: {top1_err, top1_err_std, top5_err, top5_err_std, n_seeds, n_expected}}}, errors in %.
    Means and stds are absent when no seed (std: fewer than two) finished, so DVC only ever sees numbers."""
    n_exp = len(params["model"]["seeds"])
    out = {}
    for a in params["model"]["archs"]:
        for r in params["model"]["rules"]:
            evs = [ev for (ea, er, _), ev in runs["evals"].items() if (ea, er) == (a, r)]
            cell = {"n_seeds": len(evs), "n_expected": n_exp}
            for k in ("top1_err", "top5_err"):
                vals = [100 * ev[f"val_{k}"] for ev in evs]
                if vals:
                    cell[k] = round(statistics.fmean(vals), 4)
                if len(vals) > 1:
                    cell[f"{k}_std"] = round(statistics.stdev(vals), 4)
            out.setdefault(a, {})[r] = cell
    return out


def load_published(path: Path | None) -> dict:
    """{'dataset', 'sources': [(key, citation, url)], 'refs': {(arch, rule, metric): [(value, source key)]}}.
    Every number must name a source that has a citation and a URL."""
    if path is None:
        return {"dataset": None, "sources": [], "refs": {}}
    if not path.is_file():
        raise FileNotFoundError(f"{path}: published reference file not found (params report.published)")
    doc = yaml.safe_load(path.read_text()) or {}
    srcs = doc.get("sources") or {}
    for key, s in srcs.items():
        if not (isinstance(s, dict) and s.get("citation") and s.get("url")):
            raise ValueError(f"{path}: source {key!r} needs both 'citation' and 'url'")
    refs = {}
    for i, e in enumerate(doc.get("results") or []):
        if e.get("source") not in srcs:
            raise ValueError(f"{path}: results[{i}] source {e.get('source')!r} is not one of {list(srcs)}")
        if not (e.get("arch") and e.get("rule") and e.get("metric") in ("top1_err", "top5_err")
                and _is_num(e.get("value"))):
            raise ValueError(f"{path}: results[{i}] needs arch, rule, metric top1_err|top5_err and a "
                             "numeric value (%)")
        refs.setdefault((e["arch"], e["rule"], e["metric"]), []).append((float(e["value"]), e["source"]))
    return {"dataset": doc.get("dataset"), "sources": [(k, s["citation"], s["url"]) for k, s in srcs.items()],
            "refs": refs}


def best_no_wt(summary: dict, arch: str, metric: str) -> set[str]:
    """The rule(s) without weight transport with the lowest mean error (ties all bold)."""
    means = {r: c[metric] for r, c in summary.get(arch, {}).items() if r in NO_WT and metric in c}
    return {r for r, v in means.items() if v == min(means.values())} if means else set()


def _verdict_arch(summary: dict, arch: str, claim: str) -> tuple[str, str]:
    need = ("wm", "kp", "fa", "ss") if claim == "beat" else ("wm", "kp", "bp")
    cells = summary.get(arch, {})
    absent = [r for r in need if r not in cells]
    short = [r for r in need if r in cells and cells[r]["n_seeds"] < cells[r]["n_expected"]]
    got = {r: cells[r]["top1_err"] for r in need if "top1_err" in cells.get(r, {})}
    nums = ", ".join(f"{RULE_LABELS[r]} {v:.2f}" for r, v in got.items())
    if absent or short:
        why = (f"not in params: {', '.join(absent)}; " if absent else "") + \
              (f"runs missing for: {', '.join(RULE_LABELS[r] for r in short)}" if short else "")
        return "UNDETERMINED", f"{why.rstrip('; ')}" + (f" (have top-1 err %: {nums})" if nums else "")
    if claim == "beat":
        worst, best = max(got["wm"], got["kp"]), min(got["fa"], got["ss"])
        ok = worst < best
        return ("SUPPORTED" if ok else "NOT SUPPORTED"), \
            f"top-1 err %: {nums}; worst of WM/KP {worst:.2f} {'<' if ok else '>='} best of FA/SS {best:.2f}"
    gaps = {r: got[r] - got["bp"] for r in ("wm", "kp")}
    ok = all(g <= WITHIN_POINTS for g in gaps.values())
    return ("SUPPORTED" if ok else "NOT SUPPORTED"), f"top-1 err %: {nums}; gap to BP: " + ", ".join(
        f"{RULE_LABELS[r]} {g:+.2f}" for r, g in gaps.items()) + f" (limit +{WITHIN_POINTS:g} points)"


CLAIMS = {"beat": "WM and KP beat FA and SS (top-1 error of both WM and KP below both FA and SS)",
          "near_bp": f"WM and KP are within {WITHIN_POINTS:g} points of BP's top-1 error"}


def verdicts(summary: dict, params: dict) -> list[dict]:
    """Per claim: a verdict per arch and an overall one (NOT SUPPORTED if any arch refutes it, UNDETERMINED
    if any arch lacks runs, else SUPPORTED)."""
    out = []
    for key, text in CLAIMS.items():
        per = {a: _verdict_arch(summary, a, key) for a in params["model"]["archs"]}
        vs = [v for v, _ in per.values()]
        overall = "NOT SUPPORTED" if "NOT SUPPORTED" in vs else "UNDETERMINED" if "UNDETERMINED" in vs \
            else "SUPPORTED"
        out.append({"claim": key, "text": text, "verdict": overall,
                    "per_arch": {a: {"verdict": v, "detail": d} for a, (v, d) in per.items()}})
    return out


def _cell(c: dict, metric: str, bold: bool, refs: list, src_no: dict, tex: bool) -> str:
    pm, dash = (r" $\pm$ ", "---") if tex else (" ± ", "—")
    if metric not in c:
        txt = dash
    else:
        txt = f"{c[metric]:.2f}" + (f"{pm}{c[metric + '_std']:.2f}" if f"{metric}_std" in c else "")
        if c["n_seeds"] < c["n_expected"]:
            txt += f" ({c['n_seeds']}/{c['n_expected']} seeds)"
        if bold:
            txt = rf"\textbf{{{txt}}}" if tex else f"**{txt}**"
    if refs:
        r = ", ".join(f"{v:.2f}" + (rf"\textsuperscript{{{src_no[s]}}}" if tex else f" [{src_no[s]}]")
                      for v, s in refs)
    else:
        r = "no source"
    return txt + (rf" {{\footnotesize ({r})}}" if tex else f" (ref. {r})")


def _tex_escape(s: str) -> str:
    return "".join("\\" + ch if ch in "&%$#_{}" else ch for ch in s)


def tables(summary: dict, published: dict, params: dict) -> tuple[str, str]:
    """(markdown, latex) Table 1: rules as rows, arch x (top-1, top-5) as columns, errors in %."""
    archs, rules = params["model"]["archs"], params["model"]["rules"]
    src_no = {k: i for i, (k, _, _) in enumerate(published["sources"], 1)}
    metrics = (("top1_err", "top-1"), ("top5_err", "top-5"))
    bold = {(a, m): best_no_wt(summary, a, m) for a in archs for m, _ in metrics}
    n_seeds = len(params["model"]["seeds"])
    dataset = (params.get("data") or {}).get("dataset")
    cap = (f"Test error (%) of experiment `{params['exp']}`" + (f" ({dataset})" if dataset else "") + ", "
           f"{'mean ± sample std over ' + str(n_seeds) + ' seeds' if n_seeds > 1 else 'one seed'}. "
           "Bold: best rule without weight transport (FA, SS, WM, KP) per column. In brackets: published "
           "reference numbers with their source; — = run missing.")
    head = " | ".join(f"{arch_label(a)} {lbl}" for a in archs for _, lbl in metrics)
    md = [cap, "", f"| Rule | {head} |", "|---|" + "---|" * (2 * len(archs))]
    cap_tex = _tex_escape(cap.replace("`", "")).replace("±", r"$\pm$").replace("—", "---")
    tex = ["% Generated by `dlwt report`; needs \\usepackage{booktabs}.", r"\begin{table}[t]", r"\centering",
           rf"\caption{{{cap_tex}}}",
           rf"\label{{tab:{_tex_escape(params['exp'])}}}",
           r"\begin{tabular}{l" + "cc" * len(archs) + "}", r"\toprule",
           " & " + " & ".join(rf"\multicolumn{{2}}{{c}}{{{arch_label(a)}}}" for a in archs) + r" \\",
           "".join(rf"\cmidrule(lr){{{2 + 2 * i}-{3 + 2 * i}}}" for i in range(len(archs))),
           "Rule & " + " & ".join(lbl for _ in archs for _, lbl in metrics) + r" \\", r"\midrule"]
    for r in rules:
        cells = {fmt: [_cell(summary[a][r], m, r in bold[a, m], published["refs"].get((a, r, m), []), src_no,
                             fmt == "tex") for a in archs for m, _ in metrics] for fmt in ("md", "tex")}
        name = RULE_LABELS.get(r, r.upper())
        md.append(f"| {name} | " + " | ".join(cells["md"]) + " |")
        tex.append(f"{name} & " + " & ".join(cells["tex"]) + r" \\")
    tex += [r"\bottomrule", r"\end{tabular}"]
    if published.get("note"):
        md += ["", published["note"]]
        tex += [r"\par\footnotesize " + _tex_escape(published["note"])]
    if published["sources"]:
        md += ["", "Sources: " + "; ".join(f"[{i}] {c}, <{u}>" for i, (_, c, u) in
                                            enumerate(published["sources"], 1))]
        tex += [r"\par\footnotesize " + "; ".join(
            rf"\textsuperscript{{{i}}}{_tex_escape(c)}, \texttt{{{_tex_escape(u)}}}"
            for i, (_, c, u) in enumerate(published["sources"], 1))]
    tex.append(r"\end{table}")
    return "\n".join(md) + "\n", "\n".join(tex) + "\n"


def _settings(params: dict) -> list[str]:
    m = params["model"]
    lines = [f"- experiment: `{params['exp']}`", f"- architectures: {', '.join(m['archs'])}",
             f"- rules: {', '.join(m['rules'])}", f"- seeds: {', '.join(str(s) for s in m['seeds'])}",
             "", "| train setting | value |", "|---|---|"]
    flat = pd.json_normalize(params.get("train") or {}, sep=".").to_dict("records")
    lines += [f"| {k} | {v} |" for k, v in (flat[0] if flat else {}).items()]
    return lines


def readme(params: dict, table_md: str, runs: dict, vs: list[dict], figs: list[str]) -> str:
    exp = params["exp"]
    out = [f"# Results of experiment `{exp}`", "",
           f"Generated by `dlwt report` from `results/{exp}/`: edit params and rerun the pipeline; "
           "do not edit this file by hand.", "", "## Table 1", "", table_md, "## Missing runs", ""]
    miss_ev, miss_mt = runs["missing_eval"], runs["missing_metrics"]
    if not (miss_ev or miss_mt):
        n = len(expected_runs(params))
        out.append(f"None: all {n} expected runs have an evaluation and a metrics.jsonl.")
    out += [f"- MISSING evaluation: `{n}` (no eval/{n}.json)" for n in miss_ev]
    out += [f"- MISSING training log: `{n}` (no runs/{n}/metrics.jsonl)" for n in miss_mt]
    out += ["", "## The paper's claims, checked against these numbers", ""]
    for v in vs:
        out.append(f"- **{v['text']}**: **{v['verdict']}**")
        out += [f"  - {arch_label(a)}: {d['verdict']}. {d['detail']}" for a, d in v["per_arch"].items()]
    out += ["", "## Figures", ""]
    for stem in figs:
        out += [f"![{stem}](figures/{stem}.png)", f"([PDF](figures/{stem}.pdf))", ""]
    out += ["## Settings (from params)", "", *_settings(params), "",
            "<details><summary>All params of this run</summary>", "", "```yaml",
            yaml.safe_dump(params, sort_keys=False).rstrip(), "```", "", "</details>", ""]
    return "\n".join(out)


def check_params(params: dict) -> None:
    """The few keys this stage needs (the full schema is checked upstream): a clear error, not a KeyError."""
    if not isinstance(params.get("exp"), str):
        raise ValueError("params: 'exp' must be a string naming the experiment")
    for key in ("archs", "rules", "seeds"):
        if not isinstance((params.get("model") or {}).get(key), list):
            raise ValueError(f"params: model.{key} must be a list")


def report(results_dir: Path, paper_dir: Path, params: dict) -> dict:
    """Write every report file of params['exp']; return the summary, verdicts, missing runs and paths."""
    check_params(params)
    exp = params["exp"]
    res, pap = Path(results_dir) / exp, Path(paper_dir) / exp
    pub = (params.get("report") or {}).get("published")  # relative to the working directory (repo root)
    published = load_published(Path(pub) if pub else None)
    dataset = (params.get("data") or {}).get("dataset")
    if dataset and published["dataset"] and dataset != published["dataset"]:
        # ImageNet references beside a demo/CI run on other data would invite a meaningless comparison
        published = {**published, "refs": {}, "sources": [],
                     "note": f"Published references are for {published['dataset']}; this experiment uses "
                             f"{dataset}, so none are shown."}
    runs = load(res, params)
    df = tidy(runs)
    summary = summarise(runs, params)
    vs = verdicts(summary, params)
    table_md, table_tex = tables(summary, published, params)
    files = {res / "summary.csv": df.to_csv(index=False, float_format="%.7g"),  # 7 digits: float32 precision
             res / "summary.json": json.dumps(summary, indent=2) + "\n",
             res / "curves.csv": curves(df).to_csv(index=False, float_format="%.7g"),
             pap / "table1.md": table_md, pap / "table1.tex": table_tex}
    figs = figures.draw_all(df, params)
    for stem, fig in figs.items():
        for fmt, data in figures.render(fig, dpi=(params.get("report") or {}).get("dpi", 150)).items():
            files[pap / "figures" / f"{stem}.{fmt}"] = data
    files[pap / "README.md"] = readme(params, table_md, runs, vs, list(figs))
    for path, data in files.items():
        atomic_write(path, data)
    return {"exp": exp, "summary": summary, "verdicts": vs, "missing_eval": runs["missing_eval"],
            "missing_metrics": runs["missing_metrics"], "written": [str(p) for p in files]}


def main(args) -> int:
    from dlwt.params import load
    params = load(args.params, args.overlay)
    out = report(Path(args.results), Path(args.paper), params)
    print(f"report: wrote {len(out['written'])} files for {out['exp']}; "
          f"{len(out['missing_eval'])} evaluations and {len(out['missing_metrics'])} training logs missing")
    for v in out["verdicts"]:
        print(f"  {v['verdict']:>13}: {v['text']}")
    return 0


def add_subparser(sub) -> None:
    p = sub.add_parser("report", help="Table 1, figures and README (with verdicts) from an experiment",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--overlay", action="append", default=[], help="YAML deep-merged over --params (repeatable)")
    p.add_argument("--results", default="results", help="results root (reads and writes results/<exp>/)")
    p.add_argument("--paper", default="paper", help="paper root (writes paper/<exp>/)")
    p.set_defaults(func=main)
