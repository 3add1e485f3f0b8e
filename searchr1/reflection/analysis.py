"""The reflective-phrase stage: read rollouts, count phrases, relate them to the score, write it all down.

Inputs (see searchr1.agent.trace.ROLLOUT_SCHEMA):
  <eval_dir>/rollouts/<checkpoint>/<method>__<benchmark>.parquet   greedy evaluation, one file per pair
  <eval_dir>/results.parquet                                        long form: checkpoint, step, method,
                                                                    benchmark, metric, value, n
  <train_dir>/rollouts/step-XXXXXX.parquet                          sampled training rollouts
Only the search agent's rollouts are analysed; the baselines do not reason.

Outputs in out_dir: analysis.json (everything), analysis.md (tables, verdicts, examples), one parquet
per table, and the PNG figures.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from searchr1.agent.trace import AGENT, ROLLOUT_SCHEMA
from searchr1.io import atomic_file, write_json_atomic, write_text_atomic
from searchr1.reflection import plots, stats
from searchr1.reflection.config import ReflectionConfig
from searchr1.reflection.detect import PhraseMatch, matches_in_segments
from searchr1.reflection.lexicon import Lexicon, load_lexicon
from searchr1.tracking import MetricsLogger, null_logger

SCORE_METRIC = "em"
_COLUMNS = ["checkpoint", "step", "method", "benchmark", "question_id", "question", "golden_answers",
            "prediction", "em", "segments", "gen_tokens"]
_EXAMPLES_PER_PHRASE = 12  # candidates kept per (checkpoint, phrase); the typical ones are picked at the end
_CONTEXT_CHARS = 220
P_COLUMNS = {"p", "ρ p", "fisher_p"}  # formatted as p-values in markdown tables


class AnalysisInputError(ValueError):
    """Rollout or results files that cannot be analysed; the message names the file."""


# ---------------------------------------------------------------------------------------------- reading


def _read(path: Path) -> pd.DataFrame:
    names = set(pq.read_schema(path).names)
    missing = [c for c in _COLUMNS if c not in names]
    if missing:
        raise AnalysisInputError(f"{path}: missing rollout column(s) {missing}; expected searchr1.agent.trace."
                                 f"ROLLOUT_SCHEMA")
    schema = ROLLOUT_SCHEMA
    return pq.read_table(path, columns=_COLUMNS, schema=schema).to_pandas()


def _passage(text: str, m: PhraseMatch) -> dict[str, Any]:
    """The match with some text either side, cut at whitespace, as a self-contained quote."""
    lo = max(0, m.start - _CONTEXT_CHARS)
    hi = min(len(text), m.end + _CONTEXT_CHARS)
    if lo > 0:
        lo = text.find(" ", lo, m.start) + 1 or lo
    if hi < len(text):
        cut = text.rfind(" ", m.end, hi)
        hi = cut if cut > 0 else hi
    quote = text[lo:hi]
    return {"passage": ("…" if lo > 0 else "") + quote + ("…" if hi < len(text) else ""),
            "match_start": m.start - lo + (1 if lo > 0 else 0), "match_end": m.end - lo + (1 if lo > 0 else 0)}


def annotate(frame: pd.DataFrame, lexicon: Lexicon, examples: list[dict] | None = None,
             desc: str = "") -> pd.DataFrame:
    """Per rollout: reflective, n_phrases, phrases (list), first_turn. Without the segments column.

    Example candidates (the text around a match) are appended to `examples` when it is given.
    """
    reflective, counts, phrase_lists, categories, first_turn = [], [], [], [], []
    kept: dict[tuple[str, str], int] = {}
    for row in tqdm(frame.itertuples(index=False), total=len(frame), desc=desc or "phrases", leave=False,
                    disable=len(frame) < 2000):
        segs = row.segments if row.segments is not None else []
        matches = matches_in_segments(segs, lexicon)
        reflective.append(bool(matches))
        counts.append(len(matches))
        phrase_lists.append([m.phrase for m in matches])
        categories.append(sorted({m.category for m in matches}))
        first_turn.append(matches[0].turn if matches else None)
        if examples is not None and matches:
            assistant = [s["text"] for s in segs if s["role"] == "assistant"]
            for m in matches:
                key = (row.checkpoint, m.phrase)
                if kept.get(key, 0) >= _EXAMPLES_PER_PHRASE:
                    continue
                kept[key] = kept.get(key, 0) + 1
                examples.append({
                    "checkpoint": row.checkpoint, "step": int(row.step), "benchmark": row.benchmark,
                    "question_id": row.question_id, "question": row.question, "phrase": m.phrase,
                    "category": m.category, "turn": m.turn, **_passage(assistant[m.turn - 1], m),
                    "prediction": row.prediction, "golden_answers": list(row.golden_answers),
                    "correct": bool(row.em >= 0.5), "n_phrases": len(matches),
                })
    out = frame.drop(columns=["segments"]).copy()
    out["reflective"] = reflective
    out["n_phrases"] = counts
    out["phrases"] = phrase_lists
    out["categories"] = categories
    out["first_turn"] = pd.array(first_turn, dtype="Int64")
    out["gen_tokens"] = out["gen_tokens"].fillna(0).astype("int64")
    return out


def load_eval(eval_dir: Path, lexicon: Lexicon, examples: list[dict]) -> pd.DataFrame:
    root = Path(eval_dir) / "rollouts"
    files = sorted(root.glob(f"*/{AGENT}__*.parquet"))
    if not files:
        raise AnalysisInputError(f"{root}: no {AGENT} rollouts found (expected <checkpoint>/{AGENT}__"
                                 f"<benchmark>.parquet files)")
    parts = []
    for f in tqdm(files, desc="reflection: evaluation rollouts", leave=False):
        df = _read(f)
        df = df[df["method"] == AGENT]
        if not df.empty:
            parts.append(annotate(df, lexicon, examples, desc=f.parent.name + "/" + f.stem))
    if not parts:
        raise AnalysisInputError(f"{root}: the {AGENT} rollout files hold no rows")
    return pd.concat(parts, ignore_index=True)


def load_train(train_dir: Path | None, lexicon: Lexicon) -> pd.DataFrame | None:
    if train_dir is None:
        return None
    files = sorted((Path(train_dir) / "rollouts").glob("step-*.parquet"))
    if not files:
        return None
    parts = [annotate(_read(f), lexicon, desc=f.stem) for f in tqdm(files, desc="reflection: training rollouts",
                                                                   leave=False)]
    return pd.concat(parts, ignore_index=True)


def load_scores(eval_dir: Path, rollouts: pd.DataFrame) -> pd.DataFrame:
    """EM per (checkpoint, step, benchmark) of the search agent, 'average' included.

    From results.parquet when it is there (the evaluation's own numbers), else from the rollouts.
    """
    path = Path(eval_dir) / "results.parquet"
    if path.is_file():
        res = pd.read_parquet(path)
        need = {"checkpoint", "step", "method", "benchmark", "metric", "value"}
        if not need <= set(res.columns):
            raise AnalysisInputError(f"{path}: expected columns {sorted(need)}, found {sorted(res.columns)}")
        res = res[(res["method"] == AGENT) & (res["metric"] == SCORE_METRIC)]
        if not res.empty:
            return res[["checkpoint", "step", "benchmark", "value"]].rename(columns={"value": "score"})
    per = rollouts.groupby(["checkpoint", "step", "benchmark"], as_index=False)["em"].mean()
    per = per.rename(columns={"em": "score"})
    avg = per.groupby(["checkpoint", "step"], as_index=False)["score"].mean().assign(benchmark="average")
    return pd.concat([per, avg], ignore_index=True)


# ---------------------------------------------------------------------------------------------- tables


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


def pick_examples(candidates: list[dict], n: int) -> list[dict]:
    """The most typical self-verification passages: the commonest phrases of the latest checkpoint that has
    any, one passage each, alternating right and wrong answers where both exist."""
    if not candidates:
        return []
    df = pd.DataFrame(candidates)
    latest = df["step"].max()
    df = df[df["step"] == latest]
    order = df.groupby("phrase").size().sort_values(ascending=False).index
    picked, want_correct = [], True
    for phrase in order:
        pool = df[df["phrase"] == phrase]
        pref = pool[pool["correct"] == want_correct]
        row = (pref if not pref.empty else pool).iloc[0]
        picked.append(row.to_dict())
        want_correct = not want_correct
        if len(picked) >= n:
            break
    return picked


# ---------------------------------------------------------------------------------------------- writing


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if obj is pd.NA:
        return None
    return obj


def _records(df: pd.DataFrame) -> list[dict]:
    return _jsonable(df.astype(object).where(df.notna(), None).to_dict("records"))


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    with atomic_file(path) as tmp:
        df.to_parquet(tmp, index=False)


def _fmt(v: Any, digits: int = 3, pvalue: bool = False) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if pvalue and isinstance(v, float):
        return f"{v:.2g}" if v >= 1e-4 else "<1e-4"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


_MD_SPECIAL = set("\\`*_[]<>|#~&!")


def md_escape(text: str) -> str:
    """Model and question text shown literally in Markdown: no tags, emphasis or links of its own."""
    return "".join("\\" + ch if ch in _MD_SPECIAL else ch for ch in " ".join(str(text).split()))


def markdown_table(df: pd.DataFrame, columns: list[str] | None = None, digits: int = 3) -> str:
    columns = columns or list(df.columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for _, row in df.iterrows():
        lines.append("| " + " | ".join(_fmt(row[c], digits, pvalue=c in P_COLUMNS) for c in columns) + " |")
    return "\n".join(lines)


def _ci(c: dict, key: str) -> str:
    lo, hi = c.get(key, [None, None])
    return "–" if lo is None or hi is None else f"[{lo:+.2f}, {hi:+.2f}]"


def _corr_row(name: str, c: dict) -> dict:
    return {"relation": name, "n": c["n"], "pearson r": c.get("pearson_r"), "p": c.get("pearson_p"),
            "CI": _ci(c, "pearson_ci"), "spearman ρ": c.get("spearman_rho"), "ρ p": c.get("spearman_p"),
            "ρ CI": _ci(c, "spearman_ci")}


def write_markdown(result: dict, path: Path) -> None:
    """analysis.md: what a reader needs, in the order they need it. Figures are referenced by file name."""
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
             f"- **Controlling for training step:** {s['partial_step']['verdict']}",
             f"- **Within checkpoints (same model, same questions):** {s['within_checkpoint']['verdict']}"]
    if s.get("across_training_steps"):
        lines.append(f"- **Across training steps (sampled rollouts, ratio vs. EM):** "
                     f"{s['across_training_steps']['verdict']}")
    lines += ["", f"Correlations with percentile-bootstrap {conf} CIs ({result['config']['bootstrap_samples']} "
              "resamples):", ""]
    corr_rows = [_corr_row("ratio vs. average score (checkpoints)", s["across_checkpoints"]),
                 _corr_row("phrases/1k tokens vs. average score", s["per_1k_vs_score"])]
    if s.get("seed_phrases_only"):
        corr_rows.append(_corr_row("seed phrases only: ratio vs. score", s["seed_phrases_only"]))
    if s.get("across_training_steps"):
        corr_rows.append(_corr_row("ratio vs. EM (training steps)", s["across_training_steps"]))
    for bench, c in s["per_benchmark"].items():
        corr_rows.append(_corr_row(f"{bench}: ratio vs. EM", c))
    lines += [markdown_table(pd.DataFrame(corr_rows), digits=3), ""]
    if result["caveats"]:
        lines += ["### Caveats", ""] + [f"- {c}" for c in result["caveats"]] + [""]
    by_bench = s.get("within_by_benchmark") or {}
    if by_bench:
        lines += ["### Within checkpoints, per benchmark (Mantel–Haenszel over checkpoints)", "",
                  markdown_table(pd.DataFrame([
                      {"benchmark": b, "n reflective": w["n_reflective"], "n other": w["n_other"],
                       "EM diff": w["em_diff"], "odds ratio": w["odds_ratio"], "p": w["p"]}
                      for b, w in by_bench.items()])), ""]
    cp = pd.DataFrame(result["tables"]["checkpoints"])
    if not cp.empty:
        lines += ["### Per checkpoint (search agent)", "",
                  markdown_table(cp, ["checkpoint", "step", "n", "ratio", "phrases_per_1k", "score"]), ""]
    steps = pd.DataFrame(result["tables"].get("training_steps", []))
    if not steps.empty:
        shown = steps.iloc[np.unique(np.linspace(0, len(steps) - 1, min(len(steps), 20)).round().astype(int))]
        note = "" if len(shown) == len(steps) else f" ({len(shown)} of {len(steps)} steps shown; all in the parquet)"
        lines += [f"### Per training step (sampled training rollouts){note}", "",
                  markdown_table(shown, ["step", "n", "ratio", "phrases_per_1k", "em"]), ""]
    within = pd.DataFrame(result["tables"]["em_by_reflection"])
    if not within.empty:
        lines += ["### EM of reflective vs. other rollouts, within checkpoint and benchmark", "",
                  markdown_table(within, ["checkpoint", "benchmark", "n_reflective", "em_reflective", "n_other",
                                          "em_other", "em_diff", "fisher_p"]), ""]
    top = result["tables"]["phrase_totals"][:12]
    if top:
        lines += ["### Most used phrases (evaluation rollouts, all checkpoints)", "",
                  markdown_table(pd.DataFrame(top), ["phrase", "category", "rollouts", "share"]), ""]
    lines += ["### Figures", ""] + [f"![{name}]({name})" for name in result["figures"]] + [""]
    if result["examples"]:
        lines += ["### Typical self-verification passages", ""]
        for ex in result["examples"]:
            verdict = "right" if ex["correct"] else "wrong"
            p = ex["passage"]
            a, b = ex["match_start"], ex["match_end"]
            left = md_escape(p[:a]) + (" " if p[:a][-1:].isspace() else "")
            right = (" " if p[b:][:1].isspace() else "") + md_escape(p[b:])
            quote = f"{left}**{md_escape(p[a:b])}**{right}"
            gold = " / ".join(md_escape(g) for g in ex["golden_answers"])
            lines += [f"- *{md_escape(ex['benchmark'])}, {ex['checkpoint']}, turn {ex['turn']}* — "
                      f"Q: {md_escape(ex['question'])}  ",
                      f"  > {quote}  ",
                      f"  answer: {md_escape(ex['prediction']) or '(none)'}; gold: {gold} → **{verdict}**", ""]
    write_text_atomic(path, "\n".join(lines))


# ---------------------------------------------------------------------------------------------- the stage


def _caveats(checkpoints: pd.DataFrame, train_steps: pd.DataFrame | None, s: dict, lexicon: Lexicon,
             phrase_totals: pd.DataFrame, min_points: int) -> list[str]:
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


def analyse(eval_dir: Path, train_dir: Path | None, cfg: ReflectionConfig, out_dir: Path,
            log_metrics: MetricsLogger = null_logger) -> dict:
    """Run the whole analysis; write out_dir/analysis.json, analysis.md, tables and PNGs; return a summary."""
    eval_dir, out_dir = Path(eval_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lexicon = load_lexicon(cfg.lexicon_file)
    categories = lexicon.categories

    candidates: list[dict] = []
    rollouts = load_eval(eval_dir, lexicon, candidates)
    scores = load_scores(eval_dir, rollouts)
    per_bench, checkpoints = checkpoint_tables(rollouts, scores, categories)
    train = load_train(train_dir, lexicon)
    train_steps, train_bench, train_freq = train_tables(train, categories) if train is not None else \
        (None, None, None)
    eval_freq = phrase_frequency(rollouts)

    boot = {"bootstrap_samples": cfg.bootstrap_samples, "confidence": cfg.confidence, "min_n": cfg.min_points}
    s: dict[str, Any] = {
        "across_checkpoints": stats.correlate(checkpoints["ratio"], checkpoints["score"], **boot),
        "per_1k_vs_score": stats.correlate(checkpoints["phrases_per_1k"], checkpoints["score"], **boot),
        "partial_step": stats.partial_correlation(checkpoints["ratio"], checkpoints["score"], checkpoints["step"],
                                                  confidence=cfg.confidence, min_n=cfg.min_points),
    }
    if "ratio_seed" in checkpoints:
        s["seed_phrases_only"] = stats.correlate(checkpoints["ratio_seed"], checkpoints["score"], **boot)
    s["per_benchmark"] = {
        b: stats.correlate(g["ratio"], g["score"], **boot) for b, g in per_bench.groupby("benchmark", sort=True)}
    within = stats.em_by_reflection(rollouts)
    within = within.merge(rollouts[["checkpoint", "step"]].drop_duplicates(), on="checkpoint", how="left")
    s["within_checkpoint"] = stats.pooled_em_difference(within, confidence=cfg.confidence)
    s["within_by_benchmark"] = {b: stats.pooled_em_difference(g, confidence=cfg.confidence)
                                for b, g in within.groupby("benchmark", sort=True)}
    if train_steps is not None and len(train_steps):
        s["across_training_steps"] = stats.correlate(train_steps["ratio"], train_steps["em"], unit="training steps",
                                                     **boot)
        s["across_training_steps_partial"] = stats.partial_correlation(
            train_steps["ratio"], train_steps["em"], train_steps["step"], confidence=cfg.confidence,
            min_n=cfg.min_points, unit="training steps")

    totals = eval_freq.groupby("phrase", as_index=False)["rollouts"].sum() if not eval_freq.empty else \
        pd.DataFrame(columns=["phrase", "rollouts"])
    totals["share"] = totals["rollouts"] / max(1, len(rollouts))
    cat_of = {p.text: p.category for p in lexicon.phrases}
    totals["category"] = totals["phrase"].map(cat_of)
    totals = totals.sort_values("rollouts", ascending=False).reset_index(drop=True)

    figures = []
    points = checkpoints[["checkpoint", "step", "ratio", "score"]]
    figures.append(plots.plot_ratio_vs_score(points, s["across_checkpoints"], out_dir / "ratio_vs_score.png",
                                             min_n=cfg.min_points).name)
    figures.append(plots.plot_over_steps(checkpoints, train_steps, out_dir / "ratio_score_over_steps.png").name)
    freq, source = (train_freq, "training") if train_freq is not None and not train_freq.empty else \
        (eval_freq, "evaluation")
    figures.append(plots.plot_phrase_frequency(freq, out_dir / "phrase_frequency.png", source=source).name)
    figures.append(plots.plot_within_checkpoint(within, out_dir / "within_checkpoint_em.png").name)

    examples = pick_examples(candidates, cfg.n_examples)
    tables = {"checkpoints": checkpoints, "checkpoint_benchmarks": per_bench, "em_by_reflection": within,
              "phrase_frequency_eval": eval_freq, "phrase_totals": totals}
    if train_steps is not None:
        tables.update({"training_steps": train_steps, "training_step_benchmarks": train_bench,
                       "phrase_frequency_train": train_freq})
    for name, df in tables.items():
        _write_parquet(df, out_dir / f"{name}.parquet")
    rollout_cols = ["checkpoint", "step", "benchmark", "question_id", "em", "gen_tokens", "reflective", "n_phrases",
                    "phrases", "first_turn"]
    _write_parquet(rollouts[rollout_cols], out_dir / "rollout_phrases.parquet")

    result = {
        "config": cfg.model_dump(mode="json"),
        "lexicon": {"source": lexicon.source, "digest": lexicon.digest(), "n_phrases": len(lexicon.phrases),
                    "categories": list(categories)},
        "inputs": {"eval_dir": str(eval_dir), "train_dir": str(train_dir) if train_dir else None,
                   "n_eval_rollouts": int(len(rollouts)), "n_train_rollouts": int(len(train)) if train is not None
                   else 0},
        "statistics": _jsonable(s),
        "caveats": _caveats(checkpoints, train_steps, s, lexicon, totals, cfg.min_points),
        "tables": {name: _records(df) for name, df in tables.items()},
        "examples": _jsonable(examples),
        "figures": figures,
    }
    write_json_atomic(out_dir / "analysis.json", result)
    write_markdown(result, out_dir / "analysis.md")

    for _, row in checkpoints.iterrows():
        log_metrics({"reflection/ratio": row["ratio"], "reflection/phrases_per_1k": row["phrases_per_1k"],
                     "reflection/score": row["score"]}, int(row["step"]))
    if train_steps is not None:
        for _, row in train_steps.iterrows():
            log_metrics({"reflection/train_ratio": row["ratio"], "reflection/train_phrases_per_1k":
                         row["phrases_per_1k"], "reflection/train_em": row["em"]}, int(row["step"]))
    summary = _summary(result)
    log_metrics({f"reflection/{k}": v for k, v in summary.items()
                 if isinstance(v, int | float) and not isinstance(v, bool)}, None)
    return summary


def _summary(result: dict) -> dict:
    s = result["statistics"]
    a, p, w = s["across_checkpoints"], s["partial_step"], s["within_checkpoint"]
    out = {
        "n_checkpoints": a["n"], "n_eval_rollouts": result["inputs"]["n_eval_rollouts"],
        "n_train_rollouts": result["inputs"]["n_train_rollouts"],
        "pearson_r": a.get("pearson_r"), "pearson_p": a.get("pearson_p"), "spearman_rho": a.get("spearman_rho"),
        "partial_r_step": p.get("r"), "within_em_diff": w.get("em_diff"), "within_p": w.get("p"),
        "verdict": a["verdict"], "partial_verdict": p["verdict"], "within_verdict": w["verdict"],
        "lexicon_digest": result["lexicon"]["digest"], "figures": result["figures"],
    }
    if "across_training_steps" in s:
        out["train_pearson_r"] = s["across_training_steps"].get("pearson_r")
        out["train_verdict"] = s["across_training_steps"]["verdict"]
    return json.loads(json.dumps(_jsonable(out)))
