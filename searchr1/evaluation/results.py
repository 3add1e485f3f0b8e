"""The results table: markdown and a PNG bar chart, from the long-form results.parquet.

reference=True (paper profile): this run's search agent (last checkpoint) and its baselines next
to the Search-R1 paper and the seed run, per benchmark and on average (EM, %).
reference=False (tiny profile): per suite, the search agent at each checkpoint (base vs trained)
next to the direct and RAG baselines.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from searchr1 import markdown
from searchr1.io import atomic_file, write_text_atomic
from searchr1.schema import AGENT, AVERAGE, BASE_CHECKPOINT

# Pass@1 EM (%) for Qwen2.5-3B-Instruct, GRPO, from DESIGN.md.
PAPER_BENCHMARKS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
REFERENCE_EM = {
    "Search-R1 paper": dict(zip(PAPER_BENCHMARKS, (39.7, 56.5, 39.1, 33.1, 31.0, 12.4, 23.2), strict=True)),
    "seed run": dict(zip(PAPER_BENCHMARKS, (40.6, 58.2, 42.0, 33.8, 33.2, 11.1, 29.6), strict=True)),
}
SEED_STATED = "The seed states an average of 0.349 for its run and 0.270 for its RAG baseline (×1.29)."
BEHAVIOUR = ("mean_turns", "search_calls", "invalid_call_rate", "format_failure_rate")


def checkpoint_order(frame: Any) -> list[str]:
    """The frame's checkpoint names by training step; at step 0 the base first, whichever the rows list first
    (the warm start's baselines sort before the base's agent rows when only the warm start has baselines)."""
    models = frame[["checkpoint", "step"]].drop_duplicates("checkpoint")
    models = models.assign(later=models["checkpoint"] != BASE_CHECKPOINT).sort_values(["step", "later"],
                                                                                      kind="stable")
    return list(models["checkpoint"])


def _columns(frame: Any) -> list[tuple[str, str, str, int]]:
    """(label, method, checkpoint, step) for each column of the table, in display order.

    Columns are keyed by checkpoint name, not step: the base model and the warm-started policy share step 0.
    """
    ckpts, step_of = checkpoint_order(frame), dict(zip(frame["checkpoint"], frame["step"], strict=True))
    first = [c for c in ckpts if step_of[c] == step_of[ckpts[0]]]  # the base (and the warm-started policy)
    ends = list(dict.fromkeys([*first, ckpts[-1]]))
    cols = []
    for c in ckpts if len(ckpts) <= 6 else ends:
        if ((frame["method"] == AGENT) & (frame["checkpoint"] == c)).any():
            cols.append((f"{AGENT} @ {c}", AGENT, c, int(step_of[c])))
    for method in sorted(m for m in frame["method"].unique() if m != AGENT):
        for c in ends:
            if ((frame["method"] == method) & (frame["checkpoint"] == c)).any():
                cols.append((f"{method} @ {c}", method, c, int(step_of[c])))
    return cols


def _value(frame: Any, method: str, checkpoint: str, bench: str, metric: str) -> float | None:
    sel = frame[(frame["method"] == method) & (frame["checkpoint"] == checkpoint) & (frame["benchmark"] == bench)
                & (frame["metric"] == metric)]
    return None if sel.empty else float(sel["value"].iloc[0])


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f}" if pct else f"{v:.2f}"


def results_table(results_parquet: Path, out_dir: Path, reference: bool) -> dict[str, Path]:
    """Write results.md and results.png into out_dir; returns {"markdown": path, "png": path}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    results_parquet, out_dir = Path(results_parquet), Path(out_dir)
    if not results_parquet.is_file():
        raise FileNotFoundError(f"{results_parquet}: no results table (run the evaluation stage first)")
    frame = pd.read_parquet(results_parquet)
    missing = {"checkpoint", "step", "method", "benchmark", "metric", "value", "n"} - set(frame.columns)
    if missing or frame.empty:
        raise ValueError(f"{results_parquet}: expected long-form results with columns checkpoint, step, method, "
                         f"benchmark, metric, value, n; missing {sorted(missing)}" if missing else
                         f"{results_parquet}: the results table is empty")
    benches = [b for b in dict.fromkeys(frame["benchmark"]) if b != AVERAGE]
    if reference:
        benches = [b for b in PAPER_BENCHMARKS if b in benches] + [b for b in benches if b not in PAPER_BENCHMARKS]
    rows_order = [*benches, AVERAGE]
    cols = _columns(frame)
    if reference:  # this run = the last checkpoint's agent, with its baselines
        last = max(step for *_, step in cols)
        cols = [c for c in cols if c[3] == last or c[1] != AGENT]
    n_of = {b: int(frame[(frame["benchmark"] == b) & (frame["method"] == AGENT)]["n"].max()) if
            ((frame["benchmark"] == b) & (frame["method"] == AGENT)).any() else 0 for b in rows_order}

    table: dict[str, dict[str, float | None]] = {}
    for label, method, ckpt, _ in cols:
        table[label] = {b: _value(frame, method, ckpt, b, "em") for b in rows_order}
    if reference:
        for label, ref in REFERENCE_EM.items():
            vals: dict[str, float | None] = {b: (ref[b] / 100 if b in ref else None) for b in benches}
            known = [v for v in vals.values() if v is not None]
            vals[AVERAGE] = sum(known) / len(known) if known else None
            table[label] = vals

    lines = ["## Exact match (%)", "", markdown.table(
        ["benchmark", "n", *table], ([b, str(n_of[b]), *(_fmt(table[c][b]) for c in table)] for b in rows_order))]
    if reference:
        lines += ["", SEED_STATED + " Averages in this table are plain means over the benchmarks shown."]
    lines += ["", "## Search-agent behaviour (average over benchmarks)", "", markdown.table(
        ["checkpoint", *BEHAVIOUR], ([ckpt, *(_fmt(_value(frame, AGENT, ckpt, AVERAGE, m), pct=False)
                                              for m in BEHAVIOUR)] for _, method, ckpt, _ in cols if method == AGENT))]
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "results.md"
    write_text_atomic(md, "\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(rows_order) + 2) + 3.0, 4.2))
    width = 0.8 / max(1, len(table))
    for i, (label, vals) in enumerate(table.items()):
        xs = [j + (i - (len(table) - 1) / 2) * width for j in range(len(rows_order))]
        ax.bar(xs, [100 * (vals[b] or 0.0) for b in rows_order], width, label=label)
    ax.set_xticks(range(len(rows_order)), rows_order, rotation=20)
    ax.set_ylabel("exact match (%)")
    ax.set_title("Search-R1 reproduction: exact match per benchmark")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a bar
    fig.tight_layout()
    png = out_dir / "results.png"
    with atomic_file(png) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
    return {"markdown": md, "png": png}
