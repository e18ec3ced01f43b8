"""The report's figures, drawn with seaborn from the tidy summary frame (see dlwt.report); no file I/O here.

    dlwt report --params params.yaml --results results --paper paper   # writes them to paper/<exp>/figures/

Each function takes the tidy frame (arch, rule, seed, epoch, metric, value) and returns a matplotlib Figure;
render() turns one into PDF and PNG bytes. Every rule keeps one colour, marker and dash pattern in every
figure, so a reader can match lines across figures and still tell them apart when printed in greyscale.
"""
from __future__ import annotations

import io
import os

# No display on cluster nodes or CI; a backend the user chose (or a notebook's, already loaded) wins.
os.environ.setdefault("MPLBACKEND", "Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

RULE_ORDER = ("bp", "fa", "ss", "wm", "kp")
RULE_LABELS = {"bp": "BP", "fa": "FA", "ss": "SS", "wm": "WM", "kp": "KP"}
ARCH_LABELS = {"resnet18": "ResNet-18", "resnet50": "ResNet-50", "resnet8": "ResNet-8", "resnet20": "ResNet-20",
               "resnet32": "ResNet-32", "resnet56": "ResNet-56"}
# Okabe-Ito colours (colour-blind safe); BP black and solid so the reference stands out.
RULE_COLORS = {"BP": "#000000", "FA": "#E69F00", "SS": "#56B4E9", "WM": "#009E73", "KP": "#D55E00"}
RULE_MARKERS = {"BP": "o", "FA": "s", "SS": "^", "WM": "D", "KP": "v"}
RULE_DASHES = {"BP": "", "FA": (4, 1.5), "SS": (1, 1), "WM": (3, 1, 1, 1), "KP": (6, 2)}


def arch_label(arch: str) -> str:
    return ARCH_LABELS.get(arch, arch)


def _rules(params: dict) -> list[str]:
    return [RULE_LABELS.get(r, r.upper()) for r in params["model"]["rules"]]


def _style(params: dict) -> dict:
    """hue/style kwargs shared by every per-rule plot; unknown rules fall back to seaborn's defaults."""
    rules = _rules(params)
    known = all(r in RULE_COLORS for r in rules)
    kw = dict(hue="Rule", style="Rule", hue_order=rules, style_order=rules)
    if known:
        kw.update(palette={r: RULE_COLORS[r] for r in rules}, markers={r: RULE_MARKERS[r] for r in rules},
                  dashes={r: RULE_DASHES[r] for r in rules})
    else:
        kw.update(markers=True, dashes=True)
    return kw


def _label_rules(d: pd.DataFrame) -> pd.DataFrame:
    return d.assign(Rule=d["rule"].map(lambda r: RULE_LABELS.get(r, r.upper())))


def _layers(df: pd.DataFrame, prefix: str) -> pd.DataFrame:
    """Rows whose metric is '<prefix><layer>', with layer and its depth (order of first appearance per arch,
    which is the module order the training stage wrote)."""
    d = df[df["metric"].str.startswith(prefix)].copy()
    d["layer"] = d["metric"].str.slice(len(prefix))
    d["depth"] = 0
    for _, g in d.groupby("arch", sort=False):
        order = {name: i for i, name in enumerate(pd.unique(g["layer"]))}
        d.loc[g.index, "depth"] = g["layer"].map(order)
    return d


def _empty_note(ax, text="no runs") -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _stagger_markers(g, n_points: int) -> None:
    """About ten markers per line, each rule's shifted along x, so overlapping lines keep visible markers
    (in greyscale the markers are what tells the rules apart)."""
    step = max(1, n_points // 10)
    for ax in g.axes.flat:
        for i, line in enumerate(ax.lines):
            line.set_markevery((i * step // max(1, len(ax.lines)), step))


def _finish(g, integer_x=True) -> None:
    """Mark empty panels (an expected arch or rule with no runs) and keep the legend clear of the panels."""
    for ax in g.axes.flat:
        if integer_x:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        if not ax.has_data():
            _empty_note(ax)
    if g.legend is not None:
        sns.move_legend(g, "center left", bbox_to_anchor=(1.0, 0.5))
    g.tight_layout()


def placeholder(message: str):
    """A figure that says why there is nothing to plot: the file still exists, so pipelines that declare it
    as an output do not fail, and the reader sees the reason instead of a silently absent figure."""
    fig, ax = plt.subplots(figsize=(4, 2))
    ax.axis("off")
    _empty_note(ax, message)
    return fig


def error_curves(df: pd.DataFrame, params: dict):
    """(a) top-1 test error (%) against epoch: a panel per arch, a line per rule, mean over seeds +- 1 sd."""
    d = df[df["metric"] == "val_top1_err"]
    if d.empty:
        return placeholder("no metrics.jsonl found: no curves to draw")
    d = _label_rules(d).assign(value=lambda x: 100 * x["value"], Arch=lambda x: x["arch"].map(arch_label))
    archs = [arch_label(a) for a in params["model"]["archs"]]
    g = sns.relplot(data=d, x="epoch", y="value", col="Arch", col_order=archs, kind="line", errorbar="sd",
                    height=3.2, aspect=1.25, facet_kws=dict(sharey=False), **_style(params))
    g.set_titles("{col_name}").set_axis_labels("epoch", "top-1 test error (%)")
    _stagger_markers(g, int(d["epoch"].nunique()))
    _finish(g)
    return g.figure


def angle_curves(df: pd.DataFrame, params: dict, arch: str):
    """(b) angle between B and W per layer against epoch for one arch: a panel per rule, layers coloured by
    depth (viridis: its lightness rises with depth, so the order survives greyscale)."""
    d = _layers(df[df["arch"] == arch], "angle_deg/")
    if d.empty:
        return placeholder(f"{arch_label(arch)}: no per-layer angles in metrics.jsonl")
    # Mean over seeds: with 20-50 layers a band per layer would bury the lines.
    d = _label_rules(d).groupby(["Rule", "depth", "epoch"], as_index=False)["value"].mean()
    rules = _rules(params)
    g = sns.relplot(data=d, x="epoch", y="value", hue="depth", palette="viridis", col="Rule", col_order=rules,
                    col_wrap=min(len(rules), 3), kind="line", errorbar=None, height=2.6, aspect=1.2,
                    legend="brief")
    g.set_titles("{col_name}").set_axis_labels("epoch", "angle(B, W) (deg)")
    if g.legend is not None:
        g.legend.set_title("layer depth\n(0 = first)")
    _finish(g)
    g.figure.suptitle(f"{arch_label(arch)}: feedback-weight alignment per layer", y=1.02)
    return g.figure


def _layer_ticks(ax, layers: list[str]) -> None:
    """Name only the stage boundaries (conv1, layerN, fc): 54 ResNet-50 layer names would be unreadable."""
    ticks = [(i, n.split(".")[0]) for i, n in enumerate(layers)
             if "." not in n or n.endswith(".0.conv1")]
    # ResNet-50's layer1 starts right after conv1: two labels one position apart would overprint
    ticks = [t for t, nxt in zip(ticks, ticks[1:] + [(1 << 30, "")]) if nxt[0] - t[0] > 1]
    if ticks:
        ax.set_xticks([i for i, _ in ticks], [t for _, t in ticks], rotation=45, ha="right")


W_ANGLE, G_ANGLE = "weights: angle(B, W)", "gradients: angle(rule update, backprop)"


def final_alignment(df: pd.DataFrame, params: dict):
    """(c) at evaluation, per layer: angle(B, W) and angle(rule update, backprop gradient); a row per arch,
    a line per rule (mean over seeds +- 1 sd)."""
    w = _layers(df, "final_angle_deg/").assign(quantity=W_ANGLE)
    gr = _layers(df, "final_grad_angle_deg/").assign(quantity=G_ANGLE)
    d = pd.concat([w, gr], ignore_index=True)
    if d.empty:
        return placeholder("no evaluation files: no final alignment to draw")
    d = _label_rules(d).assign(Arch=lambda x: x["arch"].map(arch_label))
    archs = [arch_label(a) for a in params["model"]["archs"]]
    g = sns.relplot(data=d, x="depth", y="value", row="Arch", row_order=archs,
                    col="quantity", col_order=[W_ANGLE, G_ANGLE],
                    kind="line", errorbar="sd", height=2.8, aspect=1.5, facet_kws=dict(sharex=False),
                    **_style(params))
    _stagger_markers(g, int(d.groupby("arch")["depth"].max().max()) + 1)
    g.set_titles("{row_name}: {col_name}").set_axis_labels("layer", "angle (deg)")
    for (arch_lbl, _), ax in g.axes_dict.items():
        arch = next((a for a in params["model"]["archs"] if arch_label(a) == arch_lbl), arch_lbl)
        layers = list(pd.unique(d.loc[d["arch"] == arch, "layer"]))
        _layer_ticks(ax, layers)
    _finish(g, integer_x=False)
    return g.figure


def draw_all(df: pd.DataFrame, params: dict) -> dict:
    """{file stem: Figure} for every figure of the report; the set of stems depends only on params."""
    figs = {"fig_error_vs_epoch": error_curves(df, params)}
    for arch in params["model"]["archs"]:
        figs[f"fig_angle_vs_epoch_{arch}"] = angle_curves(df, params, arch)
    figs["fig_final_alignment"] = final_alignment(df, params)
    return figs


def render(fig, dpi: int = 150) -> dict:
    """{'pdf': bytes, 'png': bytes}; closes the figure. No creation date in the PDF, so an unchanged result
    gives an unchanged file and DVC sees no spurious change."""
    out = {}
    for fmt, kw in (("pdf", dict(metadata={"CreationDate": None})), ("png", dict(dpi=dpi))):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, bbox_inches="tight", **kw)
        out[fmt] = buf.getvalue()
    plt.close(fig)
    return out
