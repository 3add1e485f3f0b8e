"""Searches against the hops each question needs: does the policy stop when it has the answer?

An exact-match table says a three-hop suite failed; it does not say whether the policy stopped a hop short,
searched the right number of times and misread a passage, or went on past the answer. On questions whose
metadata names their hops (the synthetic world; real benchmarks have none) this joins every search-agent
rollout to its question and counts, per checkpoint and per number of hops, the searches made against the
searches needed, and the exact match of each form of question (its chain of relations).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from searchr1 import markdown
from searchr1.agent.trace import Question
from searchr1.corpus.hops import hops_needed, relation_chain
from searchr1.evaluation.results import checkpoint_order
from searchr1.io import atomic_file
from searchr1.schema import AGENT

COLUMNS = ("checkpoint", "step", "benchmark", "question_id", "hops", "chain", "searches", "em")


def hop_frame(rollouts_dir: Path, questions: Mapping[str, Sequence[Question]]) -> pd.DataFrame:
    """One row per search-agent rollout of a question with known hops: COLUMNS, ordered by step (the tables
    below put the base first among the step-0 policies, `checkpoint_order`).

    `rollouts_dir` is the evaluation stage's `rollouts/` (one folder per checkpoint, a parquet per method and
    benchmark); `questions` are the evaluated sets by benchmark. A rollout whose question is not among them
    is an error: the two come from different runs.
    """
    # (hops, chain) once per question, not once per checkpoint's rollout of it
    known = {(bench, q["id"]): (hops_needed(q), relation_chain(q)) for bench, qs in questions.items() for q in qs
             if hops_needed(q)}
    benches = {bench for bench, _ in known}
    rows = []
    for path in sorted(Path(rollouts_dir).glob(f"*/{AGENT}__*.parquet")):
        frame = pd.read_parquet(path, columns=["checkpoint", "step", "benchmark", "question_id", "search_calls",
                                               "em"])
        for r in frame[frame["benchmark"].isin(benches)].itertuples(index=False):  # a real benchmark: none known
            form = known.get((r.benchmark, r.question_id))
            if form is None:
                raise ValueError(f"{path}: question {r.question_id!r} is not in the {r.benchmark} question set; "
                                 "the rollouts and questions come from different runs")
            rows.append((r.checkpoint, int(r.step), r.benchmark, r.question_id, *form, int(r.search_calls),
                         float(r.em)))
    out = pd.DataFrame(rows, columns=list(COLUMNS))
    return out.sort_values(["step", "checkpoint", "benchmark", "question_id"], kind="stable").reset_index(drop=True)


def searches_by_hops(frame: pd.DataFrame) -> pd.DataFrame:
    """Per checkpoint and number of hops: n, searches per question, and the shares that searched fewer times
    than the hops, exactly as many, or more (a check of a hop is one more), with the exact match of each."""
    g = frame.assign(short=frame["searches"] < frame["hops"], exact=frame["searches"] == frame["hops"],
                     more=frame["searches"] > frame["hops"])
    out = g.groupby(["checkpoint", "hops"], sort=False).agg(
        step=("step", "first"), n=("em", "size"), searches=("searches", "mean"), short=("short", "mean"),
        exact=("exact", "mean"), more=("more", "mean"), em=("em", "mean"),
        em_exact=("em", lambda s: s[g.loc[s.index, "exact"]].mean()))
    order = {c: i for i, c in enumerate(checkpoint_order(frame))}
    out = out.reset_index().sort_values(["checkpoint", "hops"], key=lambda c: c.map(order) if c.name == "checkpoint"
                                        else c, kind="stable")
    return out.reset_index(drop=True)


def em_by_chain(frame: pd.DataFrame) -> pd.DataFrame:
    """Exact match (%) of each question form (rows: chain of relations, with its hops and n) at each checkpoint
    (columns, in training order)."""
    wide = frame.pivot_table(index=["hops", "chain"], columns="checkpoint", values="em", aggfunc="mean")
    n = frame[frame["checkpoint"] == frame["checkpoint"].iloc[0]].groupby(["hops", "chain"]).size().rename("n")
    wide = (100 * wide[checkpoint_order(frame)]).round(1)
    return pd.concat([n, wide], axis=1).reset_index()


def plot_searches(table: pd.DataFrame, path: Path) -> Path:
    """Searches per question at each checkpoint, one line per number of hops, against the searches needed
    (dotted): the lines should sit on their dotted levels, apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = list(dict.fromkeys(table["checkpoint"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(order) + 2.5), 4.2))
    for i, (hops, part) in enumerate(table.groupby("hops")):
        colour = f"C{i}"
        xs = [order.index(c) for c in part["checkpoint"]]
        ax.plot(xs, part["searches"], marker="o", color=colour, label=f"{hops}-hop questions")
        ax.axhline(hops, color=colour, ls=":", lw=1)
    ax.set_xticks(range(len(order)), order, rotation=20)
    ax.set_ylabel("searches per question")
    ax.set_ylim(bottom=0)
    ax.set_title("Searches made (lines) against searches needed (dotted)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return path


class HopSection(NamedTuple):
    """What the report shows of the hop analysis: its section (markdown), one summary line (None when no
    question names its hops) and the figure (written into the report's folder)."""

    markdown: str
    headline: str | None
    figure: Path | None


def hop_headline(table: pd.DataFrame) -> str:
    """Searches per question by hops at the policy RL started from (the last of the step-0 checkpoints: the warm
    start when there is one) and at the last checkpoint, with the share of the longest questions' rollouts that
    stopped short: "searches rising with the hops", in one line."""
    order = list(dict.fromkeys(table["checkpoint"]))
    start = table[table["step"] == table["step"].min()]["checkpoint"].iloc[-1]  # the RL start: the warm start if any
    ends = list(dict.fromkeys([start, order[-1]]))
    top = int(table["hops"].max())

    def at(ckpt: str) -> str:
        part = table[table["checkpoint"] == ckpt]
        longest = part[part["hops"] == top]["short"].iloc[0]
        return (f"{' / '.join(f'{v:.2f}' for v in part['searches'])} at {ckpt} ({100 * longest:.0f}% of the "
                f"{top}-hop rollouts stopped short)")

    return (f"searches per question for {' / '.join(str(h) for h in sorted(table['hops'].unique()))} hops: "
            + " → ".join(at(c) for c in ends))


def _cell(column: str, value: object) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "–"  # no rollout of that kind
    return f"{value:.2f}" if column == "searches" else str(value)


def hop_section(rollouts_dir: Path, questions: Mapping[str, Sequence[Question]], out_dir: Path) -> HopSection:
    """The report's section, its summary line and its figure (`out_dir/hops.png`); without questions that name
    their hops, one line saying so."""
    frame = hop_frame(rollouts_dir, questions)
    if frame.empty:
        return HopSection("_The evaluated questions name no hops (real benchmarks): nothing to count._", None, None)
    table = searches_by_hops(frame)
    shown = table.assign(**{c: (100 * table[c]).round(1) for c in ("short", "exact", "more", "em", "em_exact")})
    png = plot_searches(table, Path(out_dir) / "hops.png")
    md = ["Each search-agent rollout of a question whose hops are known, against the searches it needs (one per "
          "hop; a checked hop is one more). `short`: stopped with fewer searches than hops, so the answer was "
          "never retrieved; `em_exact`: exact match of the rollouts that searched exactly once per hop.", "",
          markdown.frame_table(shown, ["checkpoint", "hops", "n", "searches", "short", "exact", "more", "em",
                                       "em_exact"], cell=_cell),
          "", "![searches against hops](hops.png)", "",
          "Exact match (%) of each form of question, by its chain of relations:", "",
          markdown.frame_table(em_by_chain(frame), cell=_cell)]
    return HopSection("\n".join(md), hop_headline(table), png)
