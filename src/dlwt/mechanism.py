"""Why kp and wm align, as predictions checked against the runs: the report's two mechanism figures.

    dlwt report --params params.yaml --overlay config/claims.yaml   # paper/claims/figures/fig_*_mechanism.png

Kolen-Pollack: B gets exactly W's gradient, weight decay and optimiser step (dlwt.rules), so in D = B - W the
gradients cancel and only weight decay acts. Under torch's SGD with momentum m every element of D follows one
linear recursion, buf <- m buf + wd D, then D <- D - lr_t (wd D + m buf) (Nesterov) or D <- D - lr_t buf, so
|D_t| = c_t |D_0| exactly, c_t being that recursion's scalar solution from c_0 = 1 under the run's own lr
schedule. Per step c shrinks by about lr wd / (1 - m): 2.5e-4 at lr 0.05, wd 5e-4, m 0.9, so a run needs
thousands of steps before kp's B approaches W. The angle follows: B = W + D, so sin angle(B, W) <= |D| / |W|,
and predicted |D_t| over the measured |W_t| bounds it.

Weight mirror: with W fixed, the mirror's noise leaves B about dlwt.rules.noise_angle_deg from W in each layer
(its fan_in, mirror.weight_decay and the noise samples per step); W moving during training adds B's lag.

The figures read the report's tidy frame (dlwt.report.tidy): per epoch 'dist/<layer>' (|B - W|),
'w_norm/<layer>', 'angle_deg/<layer>', 'step' and 'lr' from metrics.jsonl, and at epoch 0 'init_*/<layer>'
(the first row's alignment before the first training step).
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import MaxNLocator

from dlwt.engine import lr_lambda

KP_COLOR, WM_COLOR, PRED = "#D55E00", "#009E73", dict(color="0.1", linestyle="--", linewidth=1.2)


def kp_decay(train_cfg: dict, lr: float, steps_per_epoch: int) -> list[float]:
    """[c_0 = 1, c after epoch 1, ...]: the factor by which the optimiser has shrunk kp's B - W, under the
    schedule dlwt train steps once per batch (engine.lr_lambda) from base lr `lr`."""
    factor = lr_lambda(train_cfg, steps_per_epoch)
    m, wd, nesterov = train_cfg["momentum"], train_cfg["weight_decay"], train_cfg["nesterov"]
    c, buf, out = 1.0, 0.0, [1.0]
    for step in range(train_cfg["epochs"] * steps_per_epoch):
        buf = m * buf + wd * c  # torch.optim.SGD, no dampening: its first buffer is the first gradient
        c -= lr * factor(step) * ((wd * c + m * buf) if nesterov else buf)
        if (step + 1) % steps_per_epoch == 0:
            out.append(c)
    return out


def _wide(d: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """(seed, epoch, layer) x keys from the tidy rows '<key>/<layer>'; empty when a key has no rows."""
    parts = []
    for k in keys:
        p = d[d["metric"].str.startswith(f"{k}/")]
        if p.empty:
            return pd.DataFrame()
        parts.append(p.assign(layer=p["metric"].str.slice(len(k) + 1), key=k))
    x = pd.concat(parts)
    return x.pivot_table(index=["seed", "epoch", "layer"], columns="key", values="value").dropna().reset_index()


def kp_curves(df: pd.DataFrame, train_cfg: dict, arch: str) -> pd.DataFrame:
    """Per kp seed and epoch (0 = before training): the layer means of |B - W| / |B - W|_0 measured and
    predicted (c_t), of angle(B, W) measured and of its bound asin(c_t |B - W|_0 / |W_t|) (deg)."""
    d = df[(df["arch"] == arch) & (df["rule"] == "kp")]
    init = _wide(d[d["epoch"] == 0], ["init_dist", "init_angle_deg"])
    per = _wide(d[d["epoch"] > 0], ["dist", "w_norm", "angle_deg"])
    if init.empty or per.empty:  # runs trained before dlwt train logged |B - W| and the start
        return pd.DataFrame()
    out = []
    for seed, p in per.groupby("seed"):
        meta = d[(d["seed"] == seed) & (d["epoch"] == 1)].set_index("metric")["value"]
        i = init[init["seed"] == seed].set_index("layer")[["init_dist", "init_angle_deg"]]
        if i.empty or "step" not in meta or "lr" not in meta:
            continue
        n = int(meta["step"])
        factor = lr_lambda(train_cfg, n)(0)
        c = kp_decay(train_cfg, float(meta["lr"]) / factor, n)  # the row's lr is the first step's: base x factor(0)
        out.append({"seed": seed, "epoch": 0, "dist": 1.0, "dist_pred": 1.0,
                    "angle": i["init_angle_deg"].mean(), "angle_bound": 90.0})
        for epoch, e in p.groupby("epoch"):
            e = e.set_index("layer")[["dist", "w_norm", "angle_deg"]].join(i, how="inner")
            ct = c[int(epoch)] if int(epoch) < len(c) else float("nan")
            bound = [math.degrees(math.asin(min(1.0, ct * d0 / w))) for d0, w in zip(e["init_dist"], e["w_norm"])]
            out.append({"seed": seed, "epoch": int(epoch), "dist": (e["dist"] / e["init_dist"]).mean(),
                        "dist_pred": ct, "angle": e["angle_deg"].mean(), "angle_bound": sum(bound) / len(bound)})
    return pd.DataFrame(out)


def wm_predicted(arch: str, stem: str, mirror_cfg: dict) -> dict[str, float]:
    """{layer: noise angle (deg)} that the mirror's settings leave in each wm layer of arch with W fixed."""
    import dlwt
    from dlwt.mirror import noise_angle_deg
    from dlwt.rules import FEEDBACK_TYPES

    model = dlwt.models.build(arch, 10, "wm", stem)  # a layer's fan_in does not depend on the classes
    return {name: noise_angle_deg(m, mirror_cfg["weight_decay"], mirror_cfg["batch_size"], mirror_cfg["size"])
            for name, m in model.named_modules() if isinstance(m, FEEDBACK_TYPES)}


def _grid(n_archs: int):
    fig, axes = plt.subplots(n_archs, 2, figsize=(8.4, 3.0 * n_archs), squeeze=False)
    return fig, axes


def _no_runs(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def kp_figure(df: pd.DataFrame, params: dict):
    """Per arch: |B - W| / |B - W|_0 (log scale) and angle(B, W) against epoch, each kp seed a line, with the
    prediction (dashed) from the optimiser's recursion alone."""
    from dlwt.figures import arch_label

    archs, tcfg = params["model"]["archs"], params["train"]
    fig, axes = _grid(len(archs))
    for (ax_d, ax_a), arch in zip(axes, archs):
        cur = kp_curves(df, tcfg, arch)
        ax_d.set_title(f"{arch_label(arch)}: KP |B − W| / |B − W| at step 0", fontsize=9)
        ax_a.set_title(f"{arch_label(arch)}: KP angle(B, W), mean over layers", fontsize=9)
        if cur.empty:
            _no_runs(ax_d, "no kp run with per-layer |B − W|")
            _no_runs(ax_a, "no kp run with per-layer |B − W|")
            continue
        for i, (_seed, c) in enumerate(cur.groupby("seed")):
            ax_d.plot(c["epoch"], c["dist"], color=KP_COLOR, marker="v", label="measured (each seed)" if i == 0 else None)
            ax_a.plot(c["epoch"], c["angle"], color=KP_COLOR, marker="v", label="measured (each seed)" if i == 0 else None)
        c0 = cur[cur["seed"] == cur["seed"].min()]
        ax_d.plot(c0["epoch"], c0["dist_pred"], **PRED, label="predicted: weight decay's recursion")
        ax_a.plot(c0["epoch"], c0["angle_bound"], **PRED, label="bound: asin(predicted |B − W| / |W|)")
        ax_d.set_yscale("log")
        for ax, y in ((ax_d, "ratio"), (ax_a, "angle (deg)")):
            ax.set_xlabel("epoch (0: initial B and W)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(y)
            ax.legend(fontsize=7, frameon=False)
            ax.grid(color="0.92")
    fig.tight_layout()
    return fig


def wm_figure(df: pd.DataFrame, params: dict):
    """Per arch: wm's mean angle(B, W) against epoch (each seed) beside the noise angle the mirror's settings
    predict, and the final angle per layer (mean over seeds) beside each layer's prediction."""
    from dlwt.figures import _layer_ticks, arch_label

    archs = params["model"]["archs"]
    fig, axes = _grid(len(archs))
    for (ax_e, ax_l), arch in zip(axes, archs):
        pred = wm_predicted(arch, params["model"]["stem"], params["mirror"])
        d = df[(df["arch"] == arch) & (df["rule"] == "wm")]
        per = _wide(d[d["epoch"] > 0], ["angle_deg"])
        init = _wide(d[d["epoch"] == 0], ["init_angle_deg"]).rename(columns={"init_angle_deg": "angle_deg"})
        per = pd.concat([init, per]) if not per.empty else per  # epoch 0: after the mirror's warm-up
        fin = _wide(d, ["final_angle_deg"])
        ax_e.set_title(f"{arch_label(arch)}: WM angle(B, W), mean over layers", fontsize=9)
        ax_l.set_title(f"{arch_label(arch)}: WM angle(B, W) per layer at the end", fontsize=9)
        if per.empty:
            _no_runs(ax_e, "no wm run")
            _no_runs(ax_l, "no wm run")
            continue
        for i, (_seed, p) in enumerate(per.groupby("seed")):
            m = p.groupby("epoch")["angle_deg"].mean()
            ax_e.plot(m.index, m.values, color=WM_COLOR, marker="D", label="measured (each seed)" if i == 0 else None)
        ax_e.axhline(sum(pred.values()) / len(pred), **PRED, label="predicted: mirror noise, W fixed")
        layers = list(pred)
        ax_l.plot(range(len(layers)), [pred[ly] for ly in layers], **PRED, label="predicted per layer")
        if not fin.empty:
            f = fin.groupby("layer")["final_angle_deg"].mean()
            ax_l.plot(range(len(layers)), [f.get(ly, float("nan")) for ly in layers], color=WM_COLOR, marker="D",
                      label="measured (mean over seeds)")
        _layer_ticks(ax_l, layers)
        ax_e.set_xlabel("epoch (0: after the mirror's warm-up)")
        ax_e.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax_l.set_xlabel("layer")
        for ax in (ax_e, ax_l):
            ax.set_ylabel("angle (deg)")
            ax.set_ylim(bottom=0)
            ax.legend(fontsize=7, frameon=False)
            ax.grid(color="0.92")
    fig.tight_layout()
    return fig
