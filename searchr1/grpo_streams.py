"""GRPO again from a pipeline run's warm start under other sampling streams or settings, each stream's checkpoints
scored on the held-out suites: is the RL gain the configuration's, or one stream's?

    searchr1 grpo-streams --seeds 0,1                                  # tiny.yaml, streams 0 and 1
    searchr1 grpo-streams --seeds 1 --out artifacts/streams/no-warmup training.grpo.warmup_ratio=0

Each stream runs the flow's own functions (`training.train.train`, `evaluation.evaluate.evaluate_checkpoints`) on
the stages a pipeline run's ledger names (questions, index, train-data, warm-start), with `run.seed` set to the
stream; the warm start is the run's, so only GRPO's draws and its order of questions differ. A killed stream resumes
as the flow does (from its last checkpoint; scored files are kept). The table (markdown, parquet) and a plot of the
held-out average per stream and step go to `--out`, with the gain of each stream's best step over the warm start
the run's evaluate stage scored. Stream `run.seed` of the run itself repeats its GRPO stage byte for byte on the
same kind of CPU (the study log's one-off runs were this).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

from searchr1.config import ConfigError, PipelineConfig, load_config
from searchr1.io import write_text_atomic
from searchr1.ledger import LEDGER, ledger_path, read_ledger
from searchr1.markdown import frame_table
from searchr1.schema import AGENT
from searchr1.stage_cache import StageDir, StageOutput
from searchr1.summaries import WarmStartSummary

INPUTS = ("questions", "index", "train-data", "warm-start")
WARM_START = "warm-start"  # the evaluate stage's label of the policy RL started from
PROJECT = Path(__file__).resolve().parents[1]


def run_stages(artifacts: Path, run_id: str | None = None) -> dict[str, StageOutput]:
    """{stage: published output} of a pipeline run (`run_id`, or the newest whose warm start is done), from its
    ledger (`searchr1.ledger`)."""
    runs = Path(artifacts) / "runs"
    if run_id is not None:
        ledgers = [ledger_path(artifacts, run_id)]
        if not ledgers[0].is_file():
            raise FileNotFoundError(f"--run-id {run_id!r}: no ledger {ledgers[0]}")
    else:
        ledgers = sorted(runs.glob(f"*/{LEDGER}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for ledger in ledgers:
        keys = {r["stage"]: r["key"] for r in read_ledger(ledger) if r.get("status") in ("ran", "cached")}
        done = {s: StageDir(artifacts, s, k) for s, k in keys.items()}
        if all(s in done and done[s].is_complete() for s in INPUTS):
            return {s: d.load() for s, d in done.items() if d.is_complete()}
    which = f"run {run_id!r}" if run_id else f"no pipeline run under {runs}"
    raise FileNotFoundError(f"{which} has a finished warm start ({', '.join(INPUTS)} published): "
                            "run `make run` or `searchr1 run --until warm-start` first")


def warm_start_average(evaluate: StageOutput | None) -> float | None:
    """The warm start's held-out average EM in the run's evaluate stage, if it scored it."""
    path = evaluate.path / "results.parquet" if evaluate else None
    if path is None or not path.is_file():
        return None
    df = pd.read_parquet(path)
    hit = df[(df.checkpoint == WARM_START) & (df.method == AGENT) & (df.metric == "em") & (df.benchmark == "average")]
    return float(hit.value.iloc[0]) if len(hit) else None


def run_stream(stages: dict[str, StageOutput], cfg: PipelineConfig, out: Path) -> pd.DataFrame:
    """One stream: GRPO from the run's warm start, then every checkpoint on the held-out suites; EM rows by step."""
    from searchr1.corpus.build import load_question_sets
    from searchr1.evaluation.evaluate import evaluate_checkpoints
    from searchr1.retrieval.searcher import load_searcher
    from searchr1.training.checkpoints import list_checkpoints
    from searchr1.training.train import train

    ws, index = stages["warm-start"], stages["index"].path
    train(ws.path / WarmStartSummary.of(ws.summary).model, stages["train-data"].path, index, cfg, out / "train")
    questions = load_question_sets(stages["questions"].path, cfg.questions.eval_benchmarks, "test")
    evaluate_checkpoints(list_checkpoints(out / "train"), questions, load_searcher(index, cfg.retrieval), cfg,
                         out / "eval")
    df = pd.read_parquet(out / "eval" / "results.parquet")
    return df[(df.method == AGENT) & (df.metric == "em")]


def streams_table(rows: pd.DataFrame, warm_start: float | None) -> pd.DataFrame:
    """Held-out EM (%) per stream (rows) and step (columns, the suites' average), the best step and its gain."""
    avg = rows[rows.benchmark == "average"].pivot_table(index="seed", columns="step", values="value") * 100
    avg.columns = [f"step {c}" for c in avg.columns]
    table = avg.round(1)
    table["best"] = avg.max(axis=1).round(1)
    table["best step"] = avg.idxmax(axis=1).str.removeprefix("step ").astype(int)
    if warm_start is not None:
        table["gain"] = (avg.max(axis=1) - warm_start * 100).round(1)
    return table.reset_index()


def plot_streams(rows: pd.DataFrame, warm_start: float | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(6.4, 4))
    avg = rows[rows.benchmark == "average"]
    start = [] if warm_start is None else [(0, warm_start * 100)]  # every stream leaves from the warm start
    for seed, part in avg.groupby("seed"):
        part = part.sort_values("step")
        points = start + list(zip(part.step, part.value * 100, strict=True))
        ax.plot(*zip(*points, strict=True), marker="o", label=f"run.seed={seed}")
    if warm_start is not None:
        ax.axhline(warm_start * 100, color="grey", linestyle="--", label="warm start")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="GRPO step (0: the warm start)", ylabel="held-out average EM (%)",
           title="GRPO streams from one warm start")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None, prog: str = "python -m searchr1.grpo_streams") -> int:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--seeds", default="0,1", help="run.seed of each stream, comma-separated (default: %(default)s)")
    ap.add_argument("--config", default=str(PROJECT / "configs" / "tiny.yaml"), help="profile YAML (the run's)")
    ap.add_argument("--artifacts", type=Path, default=None,
                    help="the run's artifacts folder (default: the config's run.artifacts_dir)")
    ap.add_argument("--run-id", default=None, help="pipeline run whose stages to start from (default: the newest "
                    "with a finished warm start)")
    ap.add_argument("--out", type=Path, default=None, help="where the streams go (default: <artifacts>/streams)")
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides for every stream")
    args = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        seeds = []
    if not seeds:
        ap.error(f"--seeds {args.seeds!r}: expected integers separated by commas, e.g. 0,1")
    try:
        base = load_config(Path(args.config), args.overrides)
        artifacts = args.artifacts or Path(base.run.artifacts_dir)
        artifacts = artifacts if artifacts.is_absolute() else PROJECT / artifacts  # as the flow reads it
        stages = run_stages(artifacts, args.run_id)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = args.out or artifacts / "streams"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    frames = []
    for seed in seeds:
        cfg = load_config(Path(args.config), [*args.overrides, f"run.seed={seed}"])
        print(f"stream run.seed={seed} -> {out / f'seed-{seed}'}", flush=True)
        frames.append(run_stream(stages, cfg, out / f"seed-{seed}").assign(seed=seed))
    rows = pd.concat(frames, ignore_index=True)
    warm = warm_start_average(stages.get("evaluate"))
    table = streams_table(rows, warm)
    out.mkdir(parents=True, exist_ok=True)
    rows.to_parquet(out / "streams.parquet", index=False)
    head = (f"Held-out average EM (%) per GRPO stream from the warm start of {stages['warm-start'].path}"
            + (f" (warm start {warm * 100:.1f})" if warm is not None else "") + "; overrides: "
            + (" ".join(args.overrides) or "none") + "\n\n")
    text = head + frame_table(table) + "\n"
    write_text_atomic(out / "streams.md", text)
    plot_streams(rows, warm, out / "streams.png")
    print(text, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
