"""Table 1 of the report: rules x (arch, top-1/top-5), mean +- std over seeds, the best rule without weight
transport in bold, published reference numbers beside ours with their sources (paper/published.yaml).

    dlwt report --params params.yaml     # writes paper/<exp>/table1.md and table1.tex
"""
from __future__ import annotations

from pathlib import Path

import yaml

from dlwt.errors import DlwtError
from dlwt.figures import RULE_LABELS, arch_label

NO_WT = ("fa", "ss", "wm", "kp")  # rules without weight transport: the bold cell is the best of these


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def load_published(path: Path | None) -> dict:
    """{'dataset', 'sources': [(key, citation, url)], 'refs': {(arch, rule, metric): [(value, source key)]}}.
    Every number must name a source that has a citation and a URL."""
    if path is None:
        return {"dataset": None, "sources": [], "refs": {}}
    if not path.is_file():
        raise DlwtError(f"{path}: published reference file not found (params report.published)")
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        raise DlwtError(f"{path}: not valid YAML{f' (line {where.line + 1})' if where else ''}; fix it or point "
                        "params report.published at paper/published.yaml") from None
    srcs, results = (doc.get("sources") or {}, doc.get("results") or []) if isinstance(doc, dict) else (None, None)
    if not isinstance(srcs, dict) or not isinstance(results, list) \
            or not all(isinstance(e, dict) for e in results):
        raise DlwtError(f"{path}: expected a mapping with 'sources' (key: {{citation, url}}) and 'results' (a list "
                        "of {arch, rule, metric, value, source}), as in paper/published.yaml")
    for key, s in srcs.items():
        if not (isinstance(s, dict) and s.get("citation") and s.get("url")):
            raise DlwtError(f"{path}: source {key!r} needs both 'citation' and 'url'")
    refs = {}
    for i, e in enumerate(results):
        if e.get("source") not in srcs:
            raise DlwtError(f"{path}: results[{i}] source {e.get('source')!r} is not one of {list(srcs)}")
        if not (e.get("arch") and e.get("rule") and e.get("metric") in ("top1_err", "top5_err")
                and _is_num(e.get("value"))):
            raise DlwtError(f"{path}: results[{i}] needs arch, rule, metric top1_err|top5_err and a "
                             "numeric value (%)")
        refs.setdefault((e["arch"], e["rule"], e["metric"]), []).append((float(e["value"]), e["source"]))
    return {"dataset": doc.get("dataset"), "sources": [(k, s["citation"], s["url"]) for k, s in srcs.items()],
            "refs": refs}


def best_no_wt(summary: dict, arch: str, metric: str) -> set[str]:
    """The rule(s) without weight transport with the lowest mean error (ties all bold)."""
    means = {r: c[metric] for r, c in summary.get(arch, {}).items() if r in NO_WT and metric in c}
    return {r for r, v in means.items() if v == min(means.values())} if means else set()


def _cell(c: dict, metric: str, bold: bool, refs: list, src_no: dict, tex: bool) -> str:
    pm, dash = (r" $\pm$ ", "---") if tex else (" ± ", "—")
    if metric not in c:
        txt = dash
    else:
        txt = f"{c[metric]:.2f}" + (f"{pm}{c[metric + '_std']:.2f}" if f"{metric}_std" in c else "")
        if c["n_seeds"] < c["n_expected"]:
            txt += f" ({c['n_seeds']}/{c['n_expected']} seeds)"
        if c.get("n_flagged"):
            txt += r"$^\dagger$" if tex else " †"
        if bold:
            txt = rf"\textbf{{{txt}}}" if tex else f"**{txt}**"
    if not refs:  # nothing published for this cell: show nothing rather than "no source" in most cells
        return txt
    r = ", ".join(f"{v:.2f}" + (rf"\textsuperscript{{{src_no[s]}}}" if tex else f" [{src_no[s]}]") for v, s in refs)
    return txt + (rf" {{\footnotesize ({r})}}" if tex else f" (ref. {r})")


def _tex_escape(s: str) -> str:
    return "".join("\\" + ch if ch in "&%$#_{}" else ch for ch in s)


def tables(summary: dict, published: dict, params: dict, top5: bool = True) -> tuple[str, str]:
    """(markdown, latex) Table 1: rules as rows, arch x (top-1, top-5) as columns, errors in %; top-5 only
    where it says something (`top5`: the data has more than 10 classes, see dlwt.report.shows_top5)."""
    archs, rules = params["model"]["archs"], params["model"]["rules"]
    src_no = {k: i for i, (k, _, _) in enumerate(published["sources"], 1)}
    metrics = (("top1_err", "top-1"), ("top5_err", "top-5"))[:2 if top5 else 1]
    per_arch = len(metrics)
    bold = {(a, m): best_no_wt(summary, a, m) for a in archs for m, _ in metrics}
    n_seeds = len(params["model"]["seeds"])
    dataset = (params.get("data") or {}).get("dataset")
    cap = (f"Test error (%) of experiment `{params['exp']}`" + (f" ({dataset})" if dataset else "") + ", "
           f"{'mean ± sample std over ' + str(n_seeds) + ' seeds' if n_seeds > 1 else 'one seed'}. "
           "Bold: best rule without weight transport (FA, SS, WM, KP) per column. "
           + ("In brackets: published reference numbers with their source; " if src_no else "")
           + ("" if top5 else "Top-5 error is left out: with 10 classes or fewer it says little. ")
           + "— = run missing; † = a run of this cell failed a recipe check "
           "(first-epoch loss above ln(classes) or a rising train loss: see the README).")
    head = " | ".join(f"{arch_label(a)} {lbl}" for a in archs for _, lbl in metrics)
    md = [cap, "", f"| Rule | {head} |", "|---|" + "---|" * (per_arch * len(archs))]
    cap_tex = _tex_escape(cap.replace("`", "")).replace("±", r"$\pm$").replace("—", "---").replace(
        "†", r"$^\dagger$")
    tex = ["% Generated by `dlwt report`; needs \\usepackage{booktabs}.", r"\begin{table}[t]", r"\centering",
           rf"\caption{{{cap_tex}}}",
           rf"\label{{tab:{_tex_escape(params['exp'])}}}",
           r"\begin{tabular}{l" + "c" * per_arch * len(archs) + "}", r"\toprule",
           " & " + " & ".join(rf"\multicolumn{{{per_arch}}}{{c}}{{{arch_label(a)}}}" for a in archs) + r" \\",
           "".join(rf"\cmidrule(lr){{{2 + per_arch * i}-{1 + per_arch * (i + 1)}}}" for i in range(len(archs))),
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
