"""The analysis as text for a reader: analysis.md, and the caveats that go with the numbers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from searchr1 import markdown

P_COLUMNS = {"p", "ρ p", "fisher_p"}  # formatted as p-values in markdown tables


def _fmt(v: Any, digits: int = 3, pvalue: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if pvalue and isinstance(v, float):
        return f"{v:.2g}" if v >= 1e-4 else "<1e-4"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _table(df: pd.DataFrame, columns: list[str] | None = None, digits: int = 3) -> str:
    return markdown.frame_table(df, columns, lambda column, value: _fmt(value, digits, pvalue=column in P_COLUMNS))


def _ci(c: dict, key: str) -> str:
    lo, hi = c.get(key, [None, None])
    return "–" if lo is None or hi is None else f"[{lo:+.2f}, {hi:+.2f}]"


def _corr_row(name: str, c: dict) -> dict:
    return {"relation": name, "n": c["n"], "pearson r": c.get("pearson_r"), "p": c.get("pearson_p"),
            "CI": _ci(c, "pearson_ci"), "spearman ρ": c.get("spearman_rho"), "ρ p": c.get("spearman_p"),
            "ρ CI": _ci(c, "spearman_ci")}


def caveats(checkpoints: pd.DataFrame, train_steps: pd.DataFrame | None, s: dict, phrase_totals: pd.DataFrame,
            min_points: int) -> list[str]:
    """What a reader must know before believing the numbers in `s` (stats.relations' result)."""
    out = []
    n = len(checkpoints)
    if n < min_points:
        out.append(f"Only {n} evaluated checkpoint(s): too few checkpoints to conclude anything about the "
                   f"across-checkpoint relation (at least {min_points} wanted); the numbers are shown, not "
                   "interpreted.")
    if not checkpoints.empty and float(checkpoints["ratio"].max()) == 0.0:
        out.append("The model never used a reflective phrase in evaluation: there is nothing to correlate.")
    out.append("Checkpoints of one run are not independent samples, and ratio and score both move with "
               "training; the partial correlation on step and the within-checkpoint comparison address that, a "
               "plain correlation does not.")
    if train_steps is not None and not train_steps.empty:
        out.append("Training-step numbers come from sampled rollouts on training questions (temperature > 0); "
                   "consecutive steps are autocorrelated, so their p-values are optimistic.")
    if not phrase_totals.empty:
        top = phrase_totals.iloc[0]
        if top["rollouts"] > 0.5 * phrase_totals["rollouts"].sum():
            out.append(f"One phrase (“{top['phrase']}”) accounts for most matches; the ratio mostly measures it.")
    if "wait" in set(phrase_totals.get("phrase", [])):
        out.append("“wait” is ambiguous (it is also an ordinary verb); the seed-phrases-only row and the "
                   "per-phrase table show how much it drives the ratio.")
    within = s["within_checkpoint"]
    if within.get("strata_used", 0) == 0:
        out.append("No checkpoint/benchmark has both reflective and non-reflective rollouts, so the within-"
                   "checkpoint comparison is empty.")
    return out


def _example(ex: dict) -> list[str]:
    """One example passage as a list item: the matched phrase in bold, all model text escaped."""
    verdict = "right" if ex["correct"] else "wrong"
    p = ex["passage"]
    a, b = ex["match_start"], ex["match_end"]
    left = markdown.escape(p[:a]) + (" " if p[:a][-1:].isspace() else "")
    right = (" " if p[b:][:1].isspace() else "") + markdown.escape(p[b:])
    quote = f"{left}**{markdown.escape(p[a:b])}**{right}"
    gold = " / ".join(markdown.escape(g) for g in ex["golden_answers"])
    return [f"- *{markdown.escape(ex['benchmark'])}, {ex['checkpoint']}, turn {ex['turn']}* — "
            f"Q: {markdown.escape(ex['question'])}  ",
            f"  > {quote}  ",
            f"  answer: {markdown.escape(ex['prediction']) or '(none)'}; gold: {gold} → **{verdict}**", ""]


def analysis_markdown(result: dict) -> str:
    """analysis.md from analysis.json's content: what a reader needs, in the order they need it. Figures are
    referenced by file name."""
    s = result["statistics"]
    conf = f"{result['config']['confidence']:.0%}"
    lines = ["## Reflective-phrase analysis", "",
             f"Lexicon: {result['lexicon']['n_phrases']} phrases in {len(result['lexicon']['categories'])} "
             f"categories (`{result['lexicon']['source']}`, digest {result['lexicon']['digest']}). Only the "
             "model's own text counts: retrieved passages, the prompt, search queries and final answers are "
             "excluded. *Reflective ratio* = share of rollouts with at least one phrase (per checkpoint: mean "
             "over benchmarks, like the average score).", "",
             "### Verdicts", "",
             f"- **Across checkpoints (ratio vs. average score):** {s['across_checkpoints']['verdict']}",
             f"- **Controlling for training step:** {s['partial_step']['verdict']}"
             + (" (the base and the warm-started policy share step 0, so this is driven by the gap between them; "
                "the RL-trajectory line below controls for step without the base)"
                if s.get("across_rl_checkpoints") else ""),
             f"- **Within checkpoints (same model, same questions):** {s['within_checkpoint']['verdict']}"]
    if s.get("across_rl_checkpoints"):
        lines.append(f"- **Along the RL trajectory (warm start on, base left out):** "
                     f"{s['across_rl_checkpoints']['verdict']}; controlling for step: "
                     f"{s['across_rl_checkpoints_partial']['verdict']}")
    if s.get("across_training_steps"):
        lines.append(f"- **Across training steps (sampled rollouts, ratio vs. EM):** "
                     f"{s['across_training_steps']['verdict']}")
    lines += ["", f"Correlations with percentile-bootstrap {conf} CIs ({result['config']['bootstrap_samples']} "
              "resamples):", ""]
    corr_rows = [_corr_row("ratio vs. average score (checkpoints)", s["across_checkpoints"]),
                 _corr_row("phrases/1k tokens vs. average score", s["per_1k_vs_score"])]
    if s.get("across_rl_checkpoints"):
        corr_rows.append(_corr_row("ratio vs. average score (RL trajectory)", s["across_rl_checkpoints"]))
    if s.get("seed_phrases_only"):
        corr_rows.append(_corr_row("seed phrases only: ratio vs. score", s["seed_phrases_only"]))
    if s.get("across_training_steps"):
        corr_rows.append(_corr_row("ratio vs. EM (training steps)", s["across_training_steps"]))
    for bench, c in s["per_benchmark"].items():
        corr_rows.append(_corr_row(f"{bench}: ratio vs. EM", c))
    lines += [_table(pd.DataFrame(corr_rows), digits=3), ""]
    if result["caveats"]:
        lines += ["### Caveats", ""] + [f"- {c}" for c in result["caveats"]] + [""]
    by_bench = s.get("within_by_benchmark") or {}
    if by_bench:
        lines += ["### Within checkpoints, per benchmark (Mantel–Haenszel over checkpoints)", "",
                  _table(pd.DataFrame([
                      {"benchmark": b, "n reflective": w["n_reflective"], "n other": w["n_other"],
                       "EM diff": w["em_diff"], "odds ratio": w["odds_ratio"], "p": w["p"]}
                      for b, w in by_bench.items()])), ""]
    cp = pd.DataFrame(result["tables"]["checkpoints"])
    if not cp.empty:
        lines += ["### Per checkpoint (search agent)", "",
                  _table(cp, ["checkpoint", "step", "n", "ratio", "phrases_per_1k", "score"]), ""]
    steps = pd.DataFrame(result["tables"].get("training_steps", []))
    if not steps.empty:
        shown = steps.iloc[np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 20)).round().astype(int))]
        note = "" if len(shown) == len(steps) else f" ({len(shown)} of {len(steps)} steps shown; all in the parquet)"
        lines += [f"### Per training step (sampled training rollouts){note}", "",
                  _table(shown, ["step", "n", "ratio", "phrases_per_1k", "em"]), ""]
    within = pd.DataFrame(result["tables"]["em_by_reflection"])
    if not within.empty:
        lines += ["### EM of reflective vs. other rollouts, within checkpoint and benchmark", "",
                  _table(within, ["checkpoint", "benchmark", "n_reflective", "em_reflective", "n_other",
                                  "em_other", "em_diff", "fisher_p"]), ""]
    top = result["tables"]["phrase_totals"][:12]
    if top:
        lines += ["### Most used phrases (evaluation rollouts, all checkpoints)", "",
                  _table(pd.DataFrame(top), ["phrase", "category", "rollouts", "share"]), ""]
    lines += ["### Figures", ""] + [f"![{name}]({name})" for name in result["figures"]] + [""]
    if result["examples"]:
        lines += ["### Typical self-verification passages", ""]
        for ex in result["examples"]:
            lines += _example(ex)
    return "\n".join(lines)
