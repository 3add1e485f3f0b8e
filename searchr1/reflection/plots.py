"""The analysis figures, as PNGs (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from searchr1.io import atomic_file
from searchr1.reflection.stats import rl_trajectory

DPI = 130


def _save(fig, path: Path) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=DPI, bbox_inches="tight", format="png")
    plt.close(fig)
    return path


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_ratio_vs_score(points: pd.DataFrame, corr: dict, path: Path, *, title: str | None = None,
                        min_n: int = 5) -> Path:
    """The seed's figure: reflective ratio (x) vs. average score (y), one point per checkpoint, a fitted
    line with Pearson r (and n) in the legend. `points` has columns checkpoint, step, ratio, score."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    pts = points.dropna(subset=["ratio", "score"])
    if pts.empty:
        _empty(ax, "no checkpoint has both a reflective ratio and a score")
    else:
        sc = ax.scatter(pts["ratio"], pts["score"], c=pts["step"], cmap="viridis", s=60, zorder=3,
                        edgecolor="black", linewidth=0.5, label="checkpoint")
        for _, row in pts.iterrows():
            ax.annotate(str(row["checkpoint"]), (row["ratio"], row["score"]), textcoords="offset points",
                        xytext=(5, 4), fontsize=7, color="0.3")
        r = corr.get("pearson_r")
        if len(pts) >= 2 and pts["ratio"].nunique() > 1:
            slope, icept = np.polyfit(pts["ratio"], pts["score"], 1)
            xs = np.linspace(pts["ratio"].min(), pts["ratio"].max(), 50)
            label = f"linear fit, r = {r:+.2f} (n = {len(pts)})" if r is not None else f"linear fit (n = {len(pts)})"
            ax.plot(xs, slope * xs + icept, color="tab:red", lw=1.5, label=label, zorder=2)
        if pts["step"].nunique() > 1:
            fig.colorbar(sc, ax=ax, label="training step")
        ax.legend(loc="best", fontsize=8)
        ax.margins(x=0.15, y=0.1)  # room for the checkpoint labels
        if len(pts) < min_n:
            ax.text(0.02, 0.02, f"n = {len(pts)}: too few checkpoints to conclude", transform=ax.transAxes,
                    fontsize=8, color="tab:red")
    ax.set_xlabel("reflective-phrase ratio (share of rollouts with ≥ 1 phrase)")
    ax.set_ylabel("average score (EM)")
    ax.set_title(title or "Reflective ratio vs. average score, per checkpoint")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_over_steps(checkpoints: pd.DataFrame, train_steps: pd.DataFrame | None, path: Path) -> Path:
    """Two panels over training steps: reflective ratio, and score; checkpoints as markers, training
    rollouts (sampled, not greedy) as a thin line when there are any."""
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7.2, 6.0), sharex=True)
    has_train = train_steps is not None and not train_steps.empty
    if has_train:
        ts = train_steps.sort_values("step")
        ax1.plot(ts["step"], ts["ratio"], color="tab:blue", alpha=0.45, lw=1, label="training rollouts (sampled)")
        ax2.plot(ts["step"], ts["em"], color="tab:green", alpha=0.45, lw=1, label="training EM / reward (sampled)")
    if not checkpoints.empty:
        # the line follows the RL trajectory; a base that a warm start precedes shares its step 0, so it is drawn
        # apart rather than joined to the warm start by a vertical segment
        cp = rl_trajectory(checkpoints).sort_values("step", kind="stable")
        ax1.plot(cp["step"], cp["ratio"], "o-", color="tab:blue", lw=2, label="evaluated checkpoints (greedy)")
        ax2.plot(cp["step"], cp["score"], "o-", color="tab:green", lw=2, label="evaluated checkpoints: average EM")
        off = checkpoints[~checkpoints["checkpoint"].isin(cp["checkpoint"])]
        if not off.empty:
            label = ", ".join(off["checkpoint"].astype(str)) + " (before the warm start)"
            for ax, col, color in ((ax1, "ratio", "tab:blue"), (ax2, "score", "tab:green")):
                ax.plot(off["step"], off[col], "s", mfc="none", color=color, ms=8, label=label)
    if checkpoints.empty and not has_train:
        _empty(ax1, "no checkpoints and no training rollouts")
    ax1.set_ylabel("reflective ratio")
    ax2.set_ylabel("exact match")
    ax2.set_xlabel("training step")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.set_title("Reflective-phrase ratio and score over training")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    return _save(fig, path)


def plot_phrase_frequency(freq: pd.DataFrame, path: Path, *, top: int = 8, source: str = "training") -> Path:
    """Share of rollouts containing each phrase, per step, for the `top` most used phrases.
    `freq` has columns step, phrase, share."""
    fig, ax = plt.subplots(figsize=(7.2, 4.4))
    if freq.empty or freq["share"].fillna(0).max() <= 0:
        _empty(ax, "no reflective phrase was used")
    else:
        order = freq.groupby("phrase")["share"].mean().sort_values(ascending=False)
        phrases = list(order.index[:top])
        cmap = plt.get_cmap("tab10")
        for i, phrase in enumerate(phrases):
            f = freq[freq["phrase"] == phrase].sort_values("step")
            ax.plot(f["step"], f["share"], marker="o" if len(f) < 15 else None, ms=3, lw=1.5,
                    color=cmap(i % 10), label=f"“{phrase}”")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        if len(order) > top:
            ax.text(1.02, 0.0, f"+{len(order) - top} rarer phrases", transform=ax.transAxes, fontsize=7, color="0.4")
    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("share of rollouts containing the phrase")
    ax.set_title(f"Per-phrase frequency over training ({source} rollouts)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_within_checkpoint(table: pd.DataFrame, path: Path) -> Path:
    """EM of reflective vs. other rollouts per checkpoint (pooled over benchmarks), with counts on the bars."""
    fig, ax = plt.subplots(figsize=(7.2, 4.0))
    if table.empty:
        _empty(ax, "no rollouts")
    else:
        g = table.groupby(["step", "checkpoint"], as_index=False)[
            ["n_reflective", "n_other", "correct_reflective", "correct_other"]].sum().sort_values("step")
        x = np.arange(len(g))
        w = 0.38
        for off, kind, color in ((-w / 2, "reflective", "tab:orange"), (w / 2, "other", "tab:gray")):
            n = g[f"n_{kind}"].to_numpy(float)
            em = np.divide(g[f"correct_{kind}"].to_numpy(float), n, out=np.full_like(n, np.nan), where=n > 0)
            ax.bar(x + off, np.nan_to_num(em), w, color=color, label=f"{kind} rollouts")
            for xi, e, ni in zip(x + off, em, n, strict=True):
                ax.text(xi, (0 if math.isnan(e) else e) + 0.01, f"n={int(ni)}", ha="center", va="bottom",
                        fontsize=6, rotation=90)
        ax.set_xticks(x, g["checkpoint"], rotation=30, ha="right", fontsize=8)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_ylabel("exact match")
    ax.set_ylim(0, min(1.15, ax.get_ylim()[1] + 0.1))
    ax.set_title("Within each checkpoint: EM of reflective vs. other rollouts")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
