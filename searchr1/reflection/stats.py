"""Statistics for "does reflection go with a better score?", with small samples said plainly.

Three questions, each answered with its own n:
1. Across checkpoints, does the reflective ratio correlate with the average score?
   Pearson and Spearman, p-values, percentile-bootstrap confidence intervals over checkpoints; and the
   same over the RL trajectory alone (from the warm-started policy on, when there is one: the seed's
   "during training").
2. Is that just training progress? Partial correlation of ratio and score controlling for step.
3. Within one checkpoint and benchmark (same model, same questions), do reflective rollouts score
   better than the others? Per-stratum counts and Fisher tests, pooled with Mantel–Haenszel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from searchr1.schema import BASE_CHECKPOINT

MIN_N = 5  # fewer points than this: numbers are shown, no conclusion is drawn


def _finite(*arrays: Sequence[float]) -> list[np.ndarray]:
    arrs = [np.asarray(a, dtype=float) for a in arrays]
    if len({len(a) for a in arrs}) != 1:
        raise ValueError(f"arrays of different lengths: {[len(a) for a in arrs]}")
    keep = np.all([np.isfinite(a) for a in arrs], axis=0) if arrs[0].size else np.zeros(0, bool)
    return [a[keep] for a in arrs]


def _nan(x: float) -> float | None:
    """JSON-friendly: NaN becomes None."""
    return None if x is None or not math.isfinite(x) else float(x)


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((xc ** 2).sum(axis=1) * (yc ** 2).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / den
    r[den <= 1e-12] = np.nan  # a resample with a constant side has no correlation
    return r


def bootstrap_ci(x: np.ndarray, y: np.ndarray, method: str, samples: int, confidence: float,
                 seed: int = 0) -> tuple[float, float, int]:
    """Percentile CI of the correlation, resampling (x, y) pairs; returns (low, high, usable resamples)."""
    n = len(x)
    if n < 3:
        return math.nan, math.nan, 0
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(samples, n))
    xs, ys = x[idx], y[idx]
    if method == "spearman":
        xs, ys = stats.rankdata(xs, axis=1), stats.rankdata(ys, axis=1)
    r = _rowwise_pearson(xs, ys)
    r = r[np.isfinite(r)]
    if len(r) < max(10, samples // 10):
        return math.nan, math.nan, int(len(r))
    alpha = 1 - confidence
    lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi), int(len(r))


def strength(r: float) -> str:
    a = abs(r)
    return "weak" if a < 0.3 else "moderate" if a < 0.7 else "strong"


def correlate(x: Sequence[float], y: Sequence[float], *, bootstrap_samples: int = 2000, confidence: float = 0.95,
              min_n: int = MIN_N, unit: str = "checkpoints", seed: int = 0) -> dict[str, Any]:
    """Pearson and Spearman with p-values, n and bootstrap CIs, plus a one-line verdict."""
    x, y = _finite(x, y)
    n = len(x)
    out: dict[str, Any] = {"n": n, "confidence": confidence, "bootstrap_samples": bootstrap_samples}
    constant = n >= 2 and (np.ptp(x) == 0 or np.ptp(y) == 0)
    if n < 3 or constant:
        for k in ("pearson_r", "pearson_p", "spearman_rho", "spearman_p"):
            out[k] = None
        out["pearson_ci"] = out["spearman_ci"] = [None, None]
        noun = unit[:-1] if n == 1 and unit.endswith("s") else unit
        why = f"only {n} {noun}" if n < 3 else "one of the two quantities does not vary"
        out["conclusive"] = False
        out["verdict"] = f"no correlation can be computed ({why})"
        return out
    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    p_lo, p_hi, p_used = bootstrap_ci(x, y, "pearson", bootstrap_samples, confidence, seed)
    s_lo, s_hi, _ = bootstrap_ci(x, y, "spearman", bootstrap_samples, confidence, seed)
    out.update({
        "pearson_r": _nan(pr.statistic), "pearson_p": _nan(pr.pvalue), "pearson_ci": [_nan(p_lo), _nan(p_hi)],
        "spearman_rho": _nan(sr.statistic), "spearman_p": _nan(sr.pvalue), "spearman_ci": [_nan(s_lo), _nan(s_hi)],
        "bootstrap_usable": p_used,
    })
    r, p = float(pr.statistic), float(pr.pvalue)
    level = f"{confidence:.0%}"
    ci = f"{level} CI [{p_lo:+.2f}, {p_hi:+.2f}]" if math.isfinite(p_lo) else f"{level} CI not estimable"
    numbers = f"r = {r:+.2f}, p = {p:.3g}, {ci}, Spearman ρ = {float(sr.statistic):+.2f}, n = {n} {unit}"
    if n < min_n:
        out["conclusive"] = False
        out["verdict"] = f"too few {unit} to conclude (n = {n} < {min_n}); {numbers}"
        return out
    excludes_zero = math.isfinite(p_lo) and (p_lo > 0 or p_hi < 0)
    if p < 1 - confidence and excludes_zero:
        sign = "positive" if r > 0 else "negative"
        out["conclusive"] = True
        out["verdict"] = f"{strength(r)} {sign} relation: {numbers}"
    else:
        out["conclusive"] = False
        out["verdict"] = f"no clear relation: {numbers}"
    return out


def partial_correlation(x: Sequence[float], y: Sequence[float], z: Sequence[float], *,
                        confidence: float = 0.95, min_n: int = MIN_N, unit: str = "checkpoints") -> dict[str, Any]:
    """Pearson correlation of x and y after regressing both on z (here: the training step).

    If reflection only tracks training progress, ratio and score both follow the step and the partial
    correlation falls to ~0; a relation beyond progress survives it.
    """
    x, y, z = _finite(x, y, z)
    n = len(x)
    out: dict[str, Any] = {"n": n, "control": "step", "r": None, "p": None}
    if n < 4:
        out["verdict"] = f"not computable (n = {n}; a partial correlation needs at least 4 {unit})"
        return out
    design = np.column_stack([np.ones(n), z])
    rx = x - design @ np.linalg.lstsq(design, x, rcond=None)[0]
    ry = y - design @ np.linalg.lstsq(design, y, rcond=None)[0]
    scale_x, scale_y = max(np.abs(x).max(), 1e-12), max(np.abs(y).max(), 1e-12)
    if np.abs(rx).max() / scale_x < 1e-9 or np.abs(ry).max() / scale_y < 1e-9:
        out["verdict"] = "not computable: the step alone explains one of the two quantities"
        return out
    r = float(np.clip(np.corrcoef(rx, ry)[0, 1], -1.0, 1.0))
    df = n - 3  # one more parameter spent on the control
    t = r * math.sqrt(df / max(1e-15, 1 - r * r))
    p = float(2 * stats.t.sf(abs(t), df))
    out.update({"r": r, "p": p, "df": df})
    numbers = f"partial r = {r:+.2f}, p = {p:.3g}, n = {n} {unit}"
    if n < min_n:
        out["verdict"] = f"too few {unit} to conclude (n = {n} < {min_n}); {numbers}"
    elif p < 1 - confidence:
        out["verdict"] = f"the relation holds beyond training progress: {numbers}"
    else:
        out["verdict"] = f"no relation beyond training progress: {numbers}"
    return out


def em_by_reflection(rollouts: pd.DataFrame, by: Sequence[str] = ("checkpoint", "benchmark")) -> pd.DataFrame:
    """Within each group: counts and EM of reflective vs. other rollouts, with a Fisher exact test.

    `rollouts` needs columns `by`, `reflective` (bool) and `em` (0/1; >= 0.5 counts as correct).
    """
    rows = []
    for key, g in rollouts.groupby(list(by), sort=True):
        key = key if isinstance(key, tuple) else (key,)
        correct = g["em"].to_numpy(dtype=float) >= 0.5
        refl = g["reflective"].to_numpy(dtype=bool)
        a, b = int((correct & refl).sum()), int((~correct & refl).sum())
        c, d = int((correct & ~refl).sum()), int((~correct & ~refl).sum())
        n1, n0 = a + b, c + d
        em1 = a / n1 if n1 else math.nan
        em0 = c / n0 if n0 else math.nan
        p = float(stats.fisher_exact([[a, b], [c, d]]).pvalue) if n1 and n0 else math.nan
        rows.append({**dict(zip(by, key, strict=True)), "n_reflective": n1, "n_other": n0,
                     "correct_reflective": a, "correct_other": c,
                     "em_reflective": em1, "em_other": em0, "em_diff": em1 - em0, "fisher_p": p})
    cols = [*by, "n_reflective", "n_other", "correct_reflective", "correct_other", "em_reflective", "em_other",
            "em_diff", "fisher_p"]
    return pd.DataFrame(rows, columns=cols)


def pooled_em_difference(table: pd.DataFrame, *, confidence: float = 0.95) -> dict[str, Any]:
    """Mantel–Haenszel pooling of the per-stratum 2×2 tables from `em_by_reflection`.

    Only strata with both kinds of rollout say anything about the difference; the rest are counted and
    left out. Returns the pooled risk difference (EM points), the MH odds ratio and the CMH test.
    """
    t = table[(table["n_reflective"] > 0) & (table["n_other"] > 0)]
    out: dict[str, Any] = {
        "strata_total": int(len(table)), "strata_used": int(len(t)),
        "n_reflective": int(t["n_reflective"].sum()), "n_other": int(t["n_other"].sum()),
        "em_diff": None, "odds_ratio": None, "cmh_chi2": None, "p": None,
    }
    if t.empty:
        out["verdict"] = ("not computable: no checkpoint/benchmark has both reflective and non-reflective "
                          "rollouts")
        return out
    a = t["correct_reflective"].to_numpy(float)
    n1 = t["n_reflective"].to_numpy(float)
    c = t["correct_other"].to_numpy(float)
    n0 = t["n_other"].to_numpy(float)
    b, d, n = n1 - a, n0 - c, n1 + n0
    w = n1 * n0 / n
    diff = float((w * (a / n1 - c / n0)).sum() / w.sum())
    num, den = (a * d / n).sum(), (b * c / n).sum()
    odds = float(num / den) if den > 0 else math.inf if num > 0 else math.nan
    m1 = a + c  # correct in the stratum
    expected = n1 * m1 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(n > 1, n1 * n0 * m1 * (n - m1) / (n * n * (n - 1)), 0.0)
    if var.sum() <= 0:
        chi2 = p = math.nan
    else:
        chi2 = float(max(0.0, abs((a - expected).sum()) - 0.5) ** 2 / var.sum())  # continuity-corrected
        p = float(stats.chi2.sf(chi2, 1))
    out.update({"em_diff": diff, "odds_ratio": _nan(odds) if math.isfinite(odds) else None,
                "cmh_chi2": _nan(chi2), "p": _nan(p)})
    counts = f"{out['n_reflective']} reflective vs {out['n_other']} other rollouts in {len(t)} strata"
    if not math.isfinite(p):
        out["verdict"] = f"not testable (every rollout right or every rollout wrong); {counts}"
    elif p < 1 - confidence:
        better = "better" if diff > 0 else "worse"
        out["verdict"] = (f"reflective rollouts score {better} than the others on the same checkpoint and benchmark: "
                          f"{diff * 100:+.1f} EM points (MH), p = {p:.3g}; {counts}")
    else:
        out["verdict"] = (f"no clear EM difference between reflective and other rollouts within a checkpoint: "
                          f"{diff * 100:+.1f} EM points (MH), p = {p:.3g}; {counts}")
    return out


def rl_trajectory(checkpoints: pd.DataFrame) -> pd.DataFrame:
    """The checkpoints RL moved through: from the RL starting point to the last, in step order.

    Where a warm start precedes RL, the base is not on that path (both sit at step 0; the warm-started policy
    is what RL starts from), and in the tiny world a base that never writes an answer would be a point of
    format failure, not of reflection. Without a warm start the base is the starting point and stays.
    """
    is_base = checkpoints["checkpoint"] == BASE_CHECKPOINT
    warm_started = bool(((checkpoints["step"] == 0) & ~is_base).any())
    rl = checkpoints[~is_base] if warm_started else checkpoints
    return rl.sort_values("step", kind="stable").reset_index(drop=True)


def relations(checkpoints: pd.DataFrame, per_benchmark: pd.DataFrame, within: pd.DataFrame,
              train_steps: pd.DataFrame | None, *, bootstrap_samples: int = 2000, confidence: float = 0.95,
              min_n: int = MIN_N) -> dict[str, Any]:
    """All three questions for one analysis, keyed as analysis.json reports them.

    `checkpoints` and `per_benchmark` are tables.checkpoint_tables' (ratio, phrases_per_1k, score, step,
    ratio_seed when the lexicon has that category), `within` is `em_by_reflection`'s table, and
    `train_steps` tables.train_tables' per-step table (ratio, em, step) or None.
    """
    boot = {"bootstrap_samples": bootstrap_samples, "confidence": confidence, "min_n": min_n}
    s: dict[str, Any] = {
        "across_checkpoints": correlate(checkpoints["ratio"], checkpoints["score"], **boot),
        "per_1k_vs_score": correlate(checkpoints["phrases_per_1k"], checkpoints["score"], **boot),
        "partial_step": partial_correlation(checkpoints["ratio"], checkpoints["score"], checkpoints["step"],
                                            confidence=confidence, min_n=min_n),
    }
    rl = rl_trajectory(checkpoints)
    if len(rl) < len(checkpoints):
        s["across_rl_checkpoints"] = correlate(rl["ratio"], rl["score"], unit="RL checkpoints", **boot)
        s["across_rl_checkpoints_partial"] = partial_correlation(
            rl["ratio"], rl["score"], rl["step"], confidence=confidence, min_n=min_n, unit="RL checkpoints")
    if "ratio_seed" in checkpoints:
        s["seed_phrases_only"] = correlate(checkpoints["ratio_seed"], checkpoints["score"], **boot)
    s["per_benchmark"] = {
        b: correlate(g["ratio"], g["score"], **boot) for b, g in per_benchmark.groupby("benchmark", sort=True)}
    s["within_checkpoint"] = pooled_em_difference(within, confidence=confidence)
    s["within_by_benchmark"] = {b: pooled_em_difference(g, confidence=confidence)
                                for b, g in within.groupby("benchmark", sort=True)}
    if train_steps is not None and len(train_steps):
        s["across_training_steps"] = correlate(train_steps["ratio"], train_steps["em"], unit="training steps",
                                               **boot)
        s["across_training_steps_partial"] = partial_correlation(
            train_steps["ratio"], train_steps["em"], train_steps["step"], confidence=confidence, min_n=min_n,
            unit="training steps")
    return s
