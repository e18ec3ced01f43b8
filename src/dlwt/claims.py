"""The paper's claims as verdicts that carry their uncertainty: paired by seed, a 95% t-interval, or INCONCLUSIVE.

    dlwt report --params params.yaml --overlay config/demo.yaml     # the verdicts land in paper/<exp>/README.md

A claim compares a per-seed statistic with a threshold, e.g. "WM's top-1 error minus BP's, on the same seed,
is below 2 points". Pairing by seed removes what the rules share (initial W, data order), so the interval is
about the rules, not the seeds. The verdict is
    SUPPORTED      the whole 95% interval of the mean lies on the claim's side of the threshold
    CONTRADICTED   the whole interval lies on the other side
    INCONCLUSIVE   otherwise, and always with fewer than two seeds (no interval); n and the interval are shown
A claim made of several comparisons (WM and KP each beat FA and SS: four pairs) is SUPPORTED only when every
comparison is (an intersection-union test: valid at 95% without a multiplicity correction), CONTRADICTED when
any one is, else INCONCLUSIVE.
"""
from __future__ import annotations

import collections
import math
import statistics

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "SUPPORTED", "CONTRADICTED", "INCONCLUSIVE"
CONFIDENCE = 0.95
WITHIN_POINTS = 2.0    # the paper: WM and KP come "within a point or two" of BP's top-1 error
WM_MAX_ANGLE = 12.0    # the paper: WM's feedback stays 6-12 degrees from W on ImageNet (upper end of the band)
LABELS = {"bp": "BP", "fa": "FA", "ss": "SS", "wm": "WM", "kp": "KP"}


def t_quantile(df: int, confidence: float = CONFIDENCE) -> float:
    """Two-sided Student t quantile (scipy, a dependency of scikit-learn, which the project installs)."""
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def interval(values: list[float], confidence: float = CONFIDENCE) -> dict:
    """{n, mean, std, lo, hi}: the t-interval of the mean; lo/hi are None below two values."""
    vals = [float(v) for v in values]
    n = len(vals)
    out = {"n": n, "mean": statistics.fmean(vals) if vals else None, "std": None, "lo": None, "hi": None}
    if n >= 2:
        sd = statistics.stdev(vals)
        half = t_quantile(n - 1, confidence) * sd / math.sqrt(n)
        out.update(std=sd, lo=out["mean"] - half, hi=out["mean"] + half)
    return out


def judge(values: list[float], threshold: float, side: str = "below") -> dict:
    """The verdict on "the mean of values lies `side` ('below' or 'above') threshold", with its interval."""
    iv = interval(values)
    if iv["lo"] is None:
        verdict = INCONCLUSIVE
    elif side == "below":
        verdict = SUPPORTED if iv["hi"] < threshold else CONTRADICTED if iv["lo"] > threshold else INCONCLUSIVE
    else:
        verdict = SUPPORTED if iv["lo"] > threshold else CONTRADICTED if iv["hi"] < threshold else INCONCLUSIVE
    return {"verdict": verdict, "threshold": threshold, "side": side, **iv}


def paired(a: dict[int, float], b: dict[int, float]) -> dict[int, float]:
    """{seed: a[seed] - b[seed]} over the seeds both have (same seed = same init and data order)."""
    return {s: a[s] - b[s] for s in sorted(set(a) & set(b))}


def combine(verdicts: list[str]) -> str:
    if verdicts and all(v == SUPPORTED for v in verdicts):
        return SUPPORTED
    return CONTRADICTED if CONTRADICTED in verdicts else INCONCLUSIVE


def describe(j: dict, what: str) -> str:
    """One line: 'WM - FA: -3.10 [-4.02, -2.18] (n=3, 95% t-interval; claim: below 0)'."""
    if j["n"] == 0:
        return f"{what}: n=0 (no finished runs to compare)"
    if j["lo"] is None:
        return f"{what}: {j['mean']:+.2f} (n=1: one seed gives no interval)"
    return (f"{what}: {j['mean']:+.2f} [{j['lo']:+.2f}, {j['hi']:+.2f}] (n={j['n']}, {CONFIDENCE:.0%} "
            f"t-interval; claim: {j['side']} {j['threshold']:g})")


def _comparison(stat: dict, r1: str, r2: str, threshold: float, unit: str) -> dict:
    d = paired(stat.get(r1) or {}, stat.get(r2) or {})
    j = judge(list(d.values()), threshold, "below")
    return {**j, "pair": [r1, r2], "diffs": d,
            "text": describe(j, f"{LABELS.get(r1, r1)} - {LABELS.get(r2, r2)} ({unit})")}


def _one_rule(stat: dict, rule: str, threshold: float, what: str) -> dict:
    vals = stat.get(rule, {})
    j = judge(list(vals.values()), threshold, "below")
    return {**j, "values": vals, "text": describe(j, what)}


# claim key -> (text, function(per-seed statistics of one arch) -> list of comparisons)
CLAIMS = {
    "beat": ("WM and KP beat FA and SS (top-1 error, paired by seed)",
             lambda st: [_comparison(st["top1"], x, y, 0.0, "top-1 err, points")
                         for x in ("wm", "kp") for y in ("fa", "ss")]),
    "near_bp": (f"WM and KP are within {WITHIN_POINTS:g} points of BP's top-1 error (paired by seed)",
                lambda st: [_comparison(st["top1"], x, "bp", WITHIN_POINTS, "top-1 err, points")
                            for x in ("wm", "kp")]),
    "wm_aligned": (f"WM's feedback stays aligned with W: final angle(B, W), mean over layers, below "
                   f"{WM_MAX_ANGLE:g} degrees (the paper: 6-12)",
                   lambda st: [_one_rule(st["angle"], "wm", WM_MAX_ANGLE, "WM mean angle (deg)")]),
    "kp_converges": ("KP's feedback converges toward W: its mean angle(B, W) falls from the first epoch to "
                     "the last",
                     lambda st: [_one_rule(st["angle_change"], "kp", 0.0,
                                           "KP angle change, last - first epoch (deg)")]),
}


def needed(claim: str) -> tuple[str, ...]:
    return {"beat": ("wm", "kp", "fa", "ss"), "near_bp": ("wm", "kp", "bp"), "wm_aligned": ("wm",),
            "kp_converges": ("kp",)}[claim]


def check(stats: dict, rules: list[str]) -> list[dict]:
    """stats: {arch: {"top1" | "angle" | "angle_change": {rule: {seed: value}}}} (errors in %).
    Per claim: {claim, text, verdict, per_arch: {arch: {verdict, comparisons}}}; a claim about a rule that
    params does not run is INCONCLUSIVE with the reason."""
    out = []
    for key, (text, fn) in CLAIMS.items():
        per = {}
        for arch, st in stats.items():
            absent = [r for r in needed(key) if r not in rules]
            if absent:
                per[arch] = {"verdict": INCONCLUSIVE, "comparisons": [],
                             "why": f"not in params model.rules: {', '.join(absent)}"}
                continue
            comps = fn(collections.defaultdict(dict, st))  # a statistic no run has is empty
            per[arch] = {"verdict": combine([c["verdict"] for c in comps]), "comparisons": comps}
        out.append({"claim": key, "text": text, "verdict": combine([p["verdict"] for p in per.values()]),
                    "per_arch": per})
    return out
