"""The `reproduce-search-r1` flow: corpus → index → train data → (warm start) → GRPO → evaluate every
checkpoint → reflective-phrase analysis → report. Orchestration only; every stage is a task in tasks/.

Run it: `searchr1 run [--config configs/tiny.yaml] [key.sub=value ...]` (or `python -m flows.reproduce`
with the same arguments), or through a deployment: `prefect deployment run reproduce-search-r1/tiny`.
"""

from __future__ import annotations

if __name__ == "__main__":  # before the heavy imports below: the process restarts once with mimalloc preloaded
    from searchr1.allocator import ensure_preloaded

    ensure_preloaded()

import argparse  # noqa: E402
import sys
import time
from pathlib import Path
from typing import Literal, get_args

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import State

from flows import quiet, run_artifacts
from searchr1.config import ConfigError, PipelineConfig, load_config
from searchr1.io import digest
from searchr1.ledger import LEDGER, read_ledger
from searchr1.models import check_available, resolve_policy
from searchr1.tracking import PipelineTracker, headline_metrics, run_label
from tasks._stage import PipelineContext, StageOutput
from tasks.corpus import corpus_task
from tasks.evaluate import evaluate_task
from tasks.index import index_task
from tasks.questions import questions_task
from tasks.reflection import reflection_task
from tasks.report import report_task
from tasks.train import train_task
from tasks.train_data import train_data_task
from tasks.warm_start import warm_start_task

PROJECT = Path(__file__).resolve().parents[1]
# A Literal, so that Prefect refuses a wrong `until` when the run is created (the deployment's
# parameter schema lists these), not half a minute later inside the flow.
Stage = Literal["corpus", "questions", "index", "train-data", "warm-start", "train", "evaluate", "reflection",
                "report"]
STAGES: tuple[str, ...] = get_args(Stage)

quiet.install()


def _resolve(path: str) -> Path:
    """Relative paths mean the project folder, wherever the flow runs (a deployment's cwd may differ)."""
    p = Path(path)
    return p if p.is_absolute() or p.exists() else PROJECT / p


def prepare(config: str, overrides: list[str]) -> PipelineConfig:
    cfg = load_config(_resolve(config), overrides)
    check_available(cfg.policy.model)
    check_available(cfg.retrieval.embedder.model)
    artifacts = cfg.run.artifacts_dir
    if not artifacts.is_absolute():
        cfg = cfg.model_copy(update={"run": cfg.run.model_copy(update={"artifacts_dir": PROJECT / artifacts})})
    return cfg


def _profile(config: str, overrides: list[str] | None) -> str:
    try:
        return load_config(_resolve(config), overrides or []).run.name
    except (ConfigError, OSError):
        return Path(config).stem  # the run fails on the same error a moment later, with the full message


def _flow_run_name() -> str:
    """`<profile>-<short pipeline run id>`, the same name as the MLflow parent run."""
    params = flow_run.parameters
    run_id = params.get("pipeline_run_id") or str(flow_run.id)
    return run_label(_profile(params.get("config", "configs/tiny.yaml"), params.get("overrides")), run_id)


@flow(name="reproduce-search-r1", log_prints=True, flow_run_name=_flow_run_name)
def reproduce(config: str = "configs/tiny.yaml", overrides: list[str] | None = None,
              pipeline_run_id: str | None = None, until: Stage = "report") -> dict[str, str]:
    """Run (or resume) the whole pipeline; returns {stage: output directory}.

    config: a profile's YAML (configs/tiny.yaml, configs/paper.yaml) or any other config file.
    overrides: key.sub=value strings, e.g. ["training.grpo.steps=5"].
    pipeline_run_id: stages, MLflow parent run and resume state are attached to it; defaults to this
    Prefect flow run's id, which `prefect flow-run retry` keeps.
    until: stop after this stage (e.g. "index" to only prepare retrieval).
    """
    started = time.time()
    cfg = prepare(config, overrides or [])  # a bad config fails here, before any stage runs
    logger = get_run_logger()
    run_id = pipeline_run_id or str(flow_run.id or "local")
    tracker = PipelineTracker(cfg.run.artifacts_dir, cfg.run.experiment, run_id)
    cfg_json = cfg.model_dump(mode="json")
    source = config + (f" + {len(overrides)} override(s)" if overrides else "")
    parent = tracker.open(cfg_json, digest(cfg_json), flow_run_id=str(flow_run.id) if flow_run.id else None,
                          flow_run_url=flow_run.ui_url, config_source=source)
    ctx = PipelineContext(cfg, tracker, cfg.run.artifacts_dir / "runs" / run_id)
    label = run_label(cfg.run.name, run_id)
    logger.info("pipeline run %s (%s; MLflow parent run %s), artifacts in %s", run_id, label, parent.url,
                cfg.run.artifacts_dir)
    done: dict = {}

    def finished(name: str, output) -> bool:
        done[name] = output = _output(output)
        if name in ("evaluate", "reflection"):  # the numbers the runs table shows, as soon as they exist
            reflection = done.get("reflection")
            tracker.log_headline(headline_metrics(done["evaluate"].path, reflection.path if reflection else None))
        return name == until

    try:
        if finished("corpus", corpus_task(ctx)) or finished("questions", questions_task(ctx)):
            return _paths(done, parent)
        if finished("index", index_task(ctx, done["corpus"])):
            return _paths(done, parent)
        if finished("train-data", train_data_task(ctx, done["questions"])):
            return _paths(done, parent)
        policy = resolve_policy(cfg.policy, cfg.run.artifacts_dir)
        start = None
        if cfg.training.warm_start.enabled:
            start = _output(warm_start_task(ctx, policy, done["questions"], done["index"]))
            done["warm-start"] = start
        if until == "warm-start" or finished("train", train_task(ctx, policy, done["train-data"], done["index"],
                                                                 start)):
            return _paths(done, parent)
        if finished("evaluate", evaluate_task(ctx, policy, done["questions"], done["index"], done["train"])):
            return _paths(done, parent)
        if finished("reflection", reflection_task(ctx, done["evaluate"], done["train"])):
            return _paths(done, parent)
        report = _output(report_task(ctx, dict(done)))
        done["report"] = report
        print(f"Report: {report.path / 'report.html'}")
        return _paths(done, parent)
    except BaseException:
        parent.end("FAILED")
        raise
    finally:  # cached, finished or failed: the run page links its results and lists its stages
        report_file = done["report"].path / "report.html" if "report" in done else None
        try:
            run_artifacts.publish(ctx.run_dir, STAGES, started, parent.url, report_file, label)
        except Exception as exc:  # the results exist either way; never fail a run over its links
            logger.warning("could not publish the run's Prefect artifacts: %r", exc)
        rows = run_artifacts.stage_rows(read_ledger(ctx.run_dir / LEDGER), STAGES, started)
        print("Stage times:\n" + run_artifacts.stage_times_text(rows, time.time() - started))


def _output(value: StageOutput | State) -> StageOutput:
    """A task that reused its stage returns a `Cached` state (so the UI shows it); its value is the output."""
    return value.result() if isinstance(value, State) else value


def _paths(done: dict, parent) -> dict[str, str]:
    parent.end("FINISHED")
    return {name: str(out.path) for name, out in done.items()}


def main(argv: list[str] | None = None, prog: str = "python -m flows.reproduce") -> int:
    ap = argparse.ArgumentParser(prog=prog, description="Run (or resume) the reproduce-search-r1 flow in this "
                                 "process; Prefect starts a temporary server unless PREFECT_API_URL names one.")
    ap.add_argument("--config", default="configs/tiny.yaml", help="profile YAML (default: %(default)s)")
    ap.add_argument("--run-id", default=None, help="pipeline run id to resume (default: a new one)")
    ap.add_argument("--until", default="report", choices=STAGES, metavar="STAGE",
                    help=f"stop after this stage: {', '.join(STAGES)} (default: %(default)s)")
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value",
                    help="config overrides, e.g. training.grpo.steps=5")
    args = ap.parse_intermixed_args(argv)
    from searchr1.corpus.jsonl import DataError
    from searchr1.models import ModelNotFoundError

    try:
        prepare(args.config, args.overrides)  # refuse a bad config with one clear message, before Prefect starts
        result = reproduce(config=args.config, overrides=args.overrides, pipeline_run_id=args.run_id,
                           until=args.until)
    except (ConfigError, DataError, ModelNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, path in result.items():
        print(f"{name:>11}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
