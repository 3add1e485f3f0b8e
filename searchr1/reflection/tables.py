"""The analysis tables: annotated rollouts (see load.py) summed up per checkpoint, benchmark, step and phrase."""

from __future__ import annotations

import math
from collections.abc import Iterable

import pandas as pd

from searchr1.reflection.lexicon import Lexicon


def _rates(g: pd.DataFrame, categories: Iterable[str]) -> dict[str, float]:
    tokens = float(g["gen_tokens"].sum())
    out = {"n": int(len(g)), "ratio": float(g["reflective"].mean()) if len(g) else math.nan,
           "phrases_per_1k": float(g["n_phrases"].sum()) / tokens * 1000 if tokens > 0 else math.nan,
           "phrases_per_rollout": float(g["n_phrases"].mean()) if len(g) else math.nan,
           "em": float(g["em"].mean()) if len(g) else math.nan,
           "gen_tokens_mean": float(g["gen_tokens"].mean()) if len(g) else math.nan}
    for cat in categories:
        out[f"ratio_{cat}"] = float(g["categories"].map(lambda cs, c=cat: c in cs).mean()) if len(g) else math.nan
    return out


def checkpoint_tables(rollouts: pd.DataFrame, scores: pd.DataFrame, categories: tuple[str, ...]
                      ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per checkpoint × benchmark, per checkpoint). The per-checkpoint ratio is the mean over benchmarks,
    the same way the average score is, so both sides of the correlation weigh benchmarks equally."""
    rows = [{"checkpoint": c, "step": int(s), "benchmark": b, **_rates(g, categories)}
            for (c, s, b), g in rollouts.groupby(["checkpoint", "step", "benchmark"], sort=True)]
    per_bench = pd.DataFrame(rows)
    per_bench = per_bench.merge(scores, on=["checkpoint", "step", "benchmark"], how="left")
    rate_cols = [c for c in per_bench.columns if c.startswith(("ratio", "phrases_per", "gen_tokens"))]
    overall = per_bench.groupby(["checkpoint", "step"], as_index=False).agg(
        n=("n", "sum"), n_benchmarks=("benchmark", "nunique"), em=("em", "mean"),
        **{c: (c, "mean") for c in rate_cols})
    avg = scores[scores["benchmark"] == "average"][["checkpoint", "step", "score"]]
    overall = overall.merge(avg, on=["checkpoint", "step"], how="left")
    missing = overall["score"].isna()
    overall.loc[missing, "score"] = overall.loc[missing, "em"]  # no 'average' row: mean of benchmark EMs
    return per_bench.sort_values(["step", "benchmark"]), overall.sort_values("step").reset_index(drop=True)


def train_tables(train: pd.DataFrame, categories: tuple[str, ...]
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(per step, per step × benchmark, per step × phrase share) from the training rollouts."""
    steps = pd.DataFrame([{"step": int(s), **_rates(g, categories)} for s, g in train.groupby("step", sort=True)])
    per_bench = pd.DataFrame([{"step": int(s), "benchmark": b, **_rates(g, categories)}
                              for (s, b), g in train.groupby(["step", "benchmark"], sort=True)])
    return steps, per_bench, phrase_frequency(train)


def phrase_frequency(rollouts: pd.DataFrame) -> pd.DataFrame:
    """Share of rollouts that contain each phrase, per step (0 where a phrase is absent at a step)."""
    n = rollouts.groupby("step").size()
    ex = rollouts[["step", "phrases"]].copy()
    ex["phrases"] = ex["phrases"].map(lambda ps: sorted(set(ps)))
    ex = ex.explode("phrases").dropna(subset=["phrases"])
    if ex.empty:
        return pd.DataFrame(columns=["step", "phrase", "rollouts", "share"])
    cnt = ex.groupby(["step", "phrases"]).size().unstack(fill_value=0).reindex(n.index, fill_value=0)
    long = cnt.stack().rename("rollouts").reset_index().rename(columns={"phrases": "phrase"})
    long["share"] = long["rollouts"] / long["step"].map(n)
    return long.sort_values(["step", "phrase"]).reset_index(drop=True)


def phrase_totals(frequency: pd.DataFrame, n_rollouts: int, lexicon: Lexicon) -> pd.DataFrame:
    """Per phrase over all steps (a `phrase_frequency` table): rollouts, share of `n_rollouts`, category;
    commonest first."""
    totals = frequency.groupby("phrase", as_index=False)["rollouts"].sum() if not frequency.empty else \
        pd.DataFrame(columns=["phrase", "rollouts"])
    totals["share"] = totals["rollouts"] / max(1, n_rollouts)
    cat_of = {p.text: p.category for p in lexicon.phrases}
    totals["category"] = totals["phrase"].map(cat_of)
    return totals.sort_values("rollouts", ascending=False).reset_index(drop=True)
