"""The reflective-phrase stage: read rollouts, count phrases, relate them to the score, write it all down.

The steps live in their own modules: load.py (rollouts and scores into frames, phrases marked),
tables.py (per checkpoint / step / phrase), stats.py (the three questions), plots.py (figures) and
render.py (analysis.md). This module runs them in order and writes the files.

Outputs in out_dir: analysis.json (everything), analysis.md (tables, verdicts, examples), one parquet
per table, and the PNG figures.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from searchr1.io import atomic_file, write_json_atomic, write_text_atomic
from searchr1.reflection import plots, render, stats, tables
from searchr1.reflection.config import ReflectionConfig
from searchr1.reflection.lexicon import DEFAULT_LEXICON_FILE, load_lexicon
from searchr1.reflection.load import load_eval, load_scores, load_train, pick_examples
from searchr1.tracking import MetricsLogger, null_logger

_ROLLOUT_COLUMNS = ["checkpoint", "step", "benchmark", "question_id", "em", "gen_tokens", "reflective", "n_phrases",
                    "phrases", "first_turn"]  # rollout_phrases.parquet: the per-rollout annotation, no text


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


def _recorded_source(source: str) -> str:
    """The lexicon's file as the analysis records it: the shipped one by its place in the package, so that two
    checkouts write the same bytes (`searchr1 fingerprints`); a user's file as given."""
    if Path(source) == DEFAULT_LEXICON_FILE:
        return DEFAULT_LEXICON_FILE.relative_to(DEFAULT_LEXICON_FILE.parents[2]).as_posix()
    return source


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
    per_bench, checkpoints = tables.checkpoint_tables(rollouts, scores, categories)
    train = load_train(train_dir, lexicon)
    train_steps, train_bench, train_freq = tables.train_tables(train, categories) if train is not None else \
        (None, None, None)
    eval_freq = tables.phrase_frequency(rollouts)
    totals = tables.phrase_totals(eval_freq, len(rollouts), lexicon)
    within = stats.em_by_reflection(rollouts)
    within = within.merge(rollouts[["checkpoint", "step"]].drop_duplicates(), on="checkpoint", how="left")
    s = stats.relations(checkpoints, per_bench, within, train_steps, bootstrap_samples=cfg.bootstrap_samples,
                        confidence=cfg.confidence, min_n=cfg.min_points)

    figures = []
    points = checkpoints[["checkpoint", "step", "ratio", "score"]]
    figures.append(plots.plot_ratio_vs_score(points, s["across_checkpoints"], out_dir / "ratio_vs_score.png",
                                             min_n=cfg.min_points).name)
    figures.append(plots.plot_over_steps(checkpoints, train_steps, out_dir / "ratio_score_over_steps.png").name)
    freq, source = (train_freq, "training") if train_freq is not None and not train_freq.empty else \
        (eval_freq, "evaluation")
    figures.append(plots.plot_phrase_frequency(freq, out_dir / "phrase_frequency.png", source=source).name)
    figures.append(plots.plot_within_checkpoint(within, out_dir / "within_checkpoint_em.png").name)

    frames = {"checkpoints": checkpoints, "checkpoint_benchmarks": per_bench, "em_by_reflection": within,
              "phrase_frequency_eval": eval_freq, "phrase_totals": totals}
    if train_steps is not None:
        frames.update({"training_steps": train_steps, "training_step_benchmarks": train_bench,
                       "phrase_frequency_train": train_freq})
    for name, df in frames.items():
        _write_parquet(df, out_dir / f"{name}.parquet")
    _write_parquet(rollouts[_ROLLOUT_COLUMNS], out_dir / "rollout_phrases.parquet")

    result = {
        "config": cfg.model_dump(mode="json"),
        "lexicon": {"source": _recorded_source(lexicon.source), "digest": lexicon.digest(),
                    "n_phrases": len(lexicon.phrases), "categories": list(categories)},
        # relative to this folder: the same run in another folder writes the same analysis (fingerprints)
        "inputs": {"eval_dir": os.path.relpath(eval_dir, out_dir),
                   "train_dir": os.path.relpath(train_dir, out_dir) if train_dir else None,
                   "n_eval_rollouts": int(len(rollouts)), "n_train_rollouts": int(len(train)) if train is not None
                   else 0},
        "statistics": _jsonable(s),
        "caveats": render.caveats(checkpoints, train_steps, s, totals, cfg.min_points),
        "tables": {name: _records(df) for name, df in frames.items()},
        "examples": _jsonable(pick_examples(candidates, cfg.n_examples)),
        "figures": figures,
    }
    write_json_atomic(out_dir / "analysis.json", result)
    write_text_atomic(out_dir / "analysis.md", render.analysis_markdown(result))

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
    if "across_rl_checkpoints" in s:
        out["rl_pearson_r"] = s["across_rl_checkpoints"].get("pearson_r")
        out["rl_verdict"] = s["across_rl_checkpoints"]["verdict"]
    if "across_training_steps" in s:
        out["train_pearson_r"] = s["across_training_steps"].get("pearson_r")
        out["train_verdict"] = s["across_training_steps"]["verdict"]
    return json.loads(json.dumps(_jsonable(out)))
