"""Reading the stage's inputs into frames: rollouts with their reflective phrases marked, and the scores.

Inputs (see searchr1.agent.trace.ROLLOUT_SCHEMA):
  <eval_dir>/rollouts/<checkpoint>/<method>__<benchmark>.parquet   greedy evaluation, one file per pair
  <eval_dir>/results.parquet                                        long form: checkpoint, step, method,
                                                                    benchmark, metric, value, n
  <train_dir>/rollouts/step-XXXXXX.parquet                          sampled training rollouts
Only the search agent's rollouts are read; the baselines do not reason. While reading, the text around
each match is kept as a candidate example passage; `pick_examples` chooses the ones shown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from searchr1.agent.trace import ROLLOUT_SCHEMA
from searchr1.reflection.detect import PhraseMatch, matches_in_segments
from searchr1.reflection.lexicon import Lexicon
from searchr1.schema import AGENT

SCORE_METRIC = "em"
_COLUMNS = ["checkpoint", "step", "method", "benchmark", "question_id", "question", "golden_answers",
            "prediction", "em", "segments", "gen_tokens"]
_EXAMPLES_PER_PHRASE = 12  # candidates kept per (checkpoint, phrase); the typical ones are picked at the end
_CONTEXT_CHARS = 220


class AnalysisInputError(ValueError):
    """Rollout or results files that cannot be analysed; the message names the file."""


def _read(path: Path) -> pd.DataFrame:
    names = set(pq.read_schema(path).names)
    missing = [c for c in _COLUMNS if c not in names]
    if missing:
        raise AnalysisInputError(f"{path}: missing rollout column(s) {missing}; expected searchr1.agent.trace."
                                 f"ROLLOUT_SCHEMA")
    return pq.read_table(path, columns=_COLUMNS, schema=ROLLOUT_SCHEMA).to_pandas()


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
    """The search agent's evaluation rollouts, annotated; example candidates go to `examples`."""
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
    """The sampled training rollouts, annotated; None when there is no training folder or no rollouts."""
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
