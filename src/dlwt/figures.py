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

from dlwt import layout  # noqa: E402

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
    return _epoch_panels(d.assign(value=lambda x: 100 * x["value"]), params, "top-1 test error (%)")


def _epoch_panels(d: pd.DataFrame, params: dict, ylabel: str):
    """A panel per arch, a line per rule over epochs, mean over seeds +- 1 sd (the error and angle curves)."""
    d = _label_rules(d).assign(Arch=lambda x: x["arch"].map(arch_label))
    archs = [arch_label(a) for a in params["model"]["archs"]]
    g = sns.relplot(data=d, x="epoch", y="value", col="Arch", col_order=archs, kind="line", errorbar="sd",
                    height=3.2, aspect=1.25, facet_kws=dict(sharey=False), **_style(params))
    g.set_titles("{col_name}").set_axis_labels("epoch", ylabel)
    _stagger_markers(g, int(d["epoch"].nunique()))
    _finish(g)
    return g.figure


def _depth_colorbar(g, n_layers: int, label: str = "layer depth (0 = first)") -> None:
    """Depth is a continuous scale: one colorbar instead of a legend of sampled depths."""
    from matplotlib import cm, colors
    sm = cm.ScalarMappable(norm=colors.Normalize(0, max(1, n_layers - 1)), cmap="viridis")
    g.figure.colorbar(sm, ax=list(g.axes.flat), label=label, fraction=0.04, pad=0.02)


def angle_curves(df: pd.DataFrame, params: dict, arch: str):
    """(b) angle between B and W per layer against epoch for one arch: a panel per rule, layers coloured by
    depth on a continuous scale (viridis: its lightness rises with depth, so the order survives greyscale)."""
    d = _layers(df[df["arch"] == arch], "angle_deg/")
    if d.empty:
        return placeholder(f"{arch_label(arch)}: no per-layer angles in metrics.jsonl")
    # Mean over seeds: with 20-50 layers a band per layer would bury the lines.
    # BP's B is W: its angle is 0 by definition, a panel of flat lines at 0 says nothing (the suptitle says so)
    d = _label_rules(d[d["rule"] != "bp"]).groupby(["Rule", "depth", "epoch"], as_index=False)["value"].mean()
    rules = [r for r in _rules(params) if r != RULE_LABELS["bp"]]
    if d.empty:
        return placeholder(f"{arch_label(arch)}: only BP, whose angle(B, W) is 0 by definition")
    n_layers = int(d["depth"].max()) + 1
    g = sns.relplot(data=d, x="epoch", y="value", hue="depth", palette="viridis", hue_norm=(0, max(1, n_layers - 1)),
                    col="Rule", col_order=rules, col_wrap=len(rules) if len(rules) <= 4 else 3, kind="line", errorbar=None,
                    height=2.6, aspect=1.2, legend=False)
    g.set_titles("{col_name}").set_axis_labels("epoch", "angle(B, W) (deg)")
    _finish(g)
    _depth_colorbar(g, n_layers)
    bp = " (BP: 0° by definition, not drawn)" if "bp" in params["model"]["rules"] else ""
    g.figure.suptitle(f"{arch_label(arch)}: feedback-weight alignment per layer{bp}", y=1.02)
    return g.figure


def final_error(df: pd.DataFrame, params: dict):
    """(d) final top-1 test error per rule: every seed a dot (no jitter: random jitter would change the file
    on every rerun), mean +- 1 sd a bar, a panel per arch with its
    own y range, so differences of a point stay visible next to FA's tens of points."""
    d = df[df["metric"] == "final_val_top1_err"]
    if d.empty:
        return placeholder("no evaluation files: no final errors to draw")
    d = _label_rules(d).assign(value=lambda x: 100 * x["value"], Arch=lambda x: x["arch"].map(arch_label))
    archs, rules = [arch_label(a) for a in params["model"]["archs"]], _rules(params)
    known = all(r in RULE_COLORS for r in rules)
    pal = {r: RULE_COLORS[r] for r in rules} if known else None
    g = sns.catplot(data=d, x="Rule", y="value", col="Arch", col_order=archs, order=rules, kind="point",
                    errorbar="sd", capsize=0.2, linestyle="none", color="0.2", height=3.2, aspect=1.1,
                    sharey=False, zorder=3)
    for arch_lbl, ax in g.axes_dict.items():
        sns.stripplot(data=d[d["Arch"] == arch_lbl], x="Rule", y="value", order=rules, hue="Rule",
                      hue_order=rules, palette=pal, ax=ax, size=5, jitter=False, legend=False, alpha=0.8)
        ax.grid(axis="y", color="0.9")
    g.set_titles("{col_name}").set_axis_labels("", "final top-1 test error (%)")
    g.figure.suptitle("dots: seeds; bar: mean ± 1 sd", y=1.02, fontsize=9)
    for ax in g.axes.flat:
        if not ax.has_data():
            _empty_note(ax)
    g.tight_layout()
    return g.figure


def grad_alignment_curves(df: pd.DataFrame, params: dict):
    """(e) how close each rule's weight update is to backprop's gradient over training: the angle on one fixed
    train batch, mean over layers, mean +- 1 sd over seeds; a panel per arch. Drawn when train logs it."""
    d = _layers(df, "grad_angle_deg/")
    if d.empty:
        return placeholder("no per-epoch gradient alignment in metrics.jsonl")
    d = d.groupby(["arch", "rule", "seed", "epoch"], as_index=False)["value"].mean()
    return _epoch_panels(d, params, "angle(rule update, BP gradient) (deg)\nmean over layers")


def _layer_ticks(ax, layers: list[str]) -> None:
    """Name only the stage boundaries (conv1, layerN, fc): 54 ResNet-50 layer names would be unreadable. The
    first position is always named; a boundary too close to the one before (layer1 right after conv1) joins
    its label ("conv1 + layer1") instead of overprinting it."""
    gap = max(2, len(layers) // 12)
    ticks: list[list] = []
    for i, n in enumerate(layers):
        if "." in n and not n.endswith(".0.conv1"):
            continue
        name = n.split(".")[0]
        if ticks and i - ticks[-1][0] < gap:
            ticks[-1][1] += f" + {name}"
        else:
            ticks.append([i, name])
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
    # the classifier's weight gradient is the error times its input: no B on the way, so it is backprop's under
    # every rule; its 0 degrees is true by construction, not a result. Said under the panels, where no line is.
    g.figure.text(0.5, -0.02, "gradients: the classifier's (last position's) 0° holds under every rule by "
                  "construction (no B on its gradient's path)", ha="center", va="top", fontsize=8, color="0.3")
    return g.figure


# what each figure of dlwt.layout.figures draws (its file names are spelled there)
DRAW = {"error_vs_epoch": error_curves, "final_error": final_error, "angle_vs_epoch": angle_curves,
        "final_alignment": final_alignment, "grad_alignment_vs_epoch": grad_alignment_curves}


def _mechanism(what: str):
    def draw(df: pd.DataFrame, params: dict):
        from dlwt import mechanism  # imports this module: loaded when drawn
        return getattr(mechanism, f"{what}_figure")(df, params)
    return draw


DRAW.update(kp_mechanism=_mechanism("kp"), wm_mechanism=_mechanism("wm"))


def draw_all(df: pd.DataFrame, params: dict) -> dict:
    """{file stem: Figure} for every figure of the report: exactly dlwt.layout.figures(params), in its order."""
    return {stem: DRAW[what](df, params, *([arch] if arch else []))
            for stem, (what, arch) in layout.figures(params).items()}


def render(fig, dpi: int = 150) -> dict:
    """{'pdf': bytes, 'png': bytes}; closes the figure. No creation date in the PDF, so an unchanged result
    gives an unchanged file and DVC sees no spurious change."""
    out = {}
    # no creation date or software version in either file: a rerun (or a matplotlib upgrade) of the same
    # result gives the same bytes, and `git status` stays clean
    for fmt, kw in (("pdf", dict(metadata={"CreationDate": None, "Producer": None, "Creator": None})),
                    ("png", dict(dpi=dpi, metadata={"Software": None}))):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, bbox_inches="tight", **kw)
        out[fmt] = buf.getvalue()
    plt.close(fig)
    return out
