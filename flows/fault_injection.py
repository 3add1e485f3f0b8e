"""Kill the pipeline with SIGKILL inside each stage in turn, resume, and check that nothing was lost.

    searchr1 fault-injection --out artifacts/fault-injection            # every kill point
    searchr1 fault-injection --out /tmp/fi --until train-data --points corpus.after_shard
    (or python -m flows.fault_injection with the same arguments)

One pipeline run id is driven through the whole chain: attempt k is killed at point k (a real
SIGKILL of the process running the flow: no cleanup, like a preempted node), attempt k+1 resumes
it. A final attempt runs without faults, then an uninterrupted reference run of the same config in
a separate artifacts folder. Checks, per kill point and at the end:

- the killed stage left no complete-looking output (no manifest, no stray temp file in one);
- stages finished before the kill were not recomputed on resume (the stage ledger says "cached");
- the final outputs equal the reference run's (content hashes of every data file per stage);
- MLflow holds one parent run for the pipeline run id, and no training step twice.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from searchr1 import markdown as md
from searchr1.ledger import ledger_path, read_ledger

PROJECT = Path(__file__).resolve().parents[1]

# In DAG order; each names a `searchr1.faults.point` in the code.
POINTS = [
    "corpus.after_shard", "corpus.before_publish", "questions.before_publish", "index.before_publish",
    "train-data.before_publish", "warm-start.before_publish", "train.after_step", "train.mid_checkpoint",
    "train.before_publish", "evaluate.after_pair", "evaluate.before_publish", "reflection.before_publish",
    "report.before_publish",
]

# A small world and a short training run: the whole chain is about two pipeline runs of work.
SMALL = [
    "corpus.synthetic.n_people=60", "corpus.synthetic.n_places=12", "corpus.synthetic.n_organisations=10",
    "corpus.synthetic.n_works=30", "corpus.synthetic.questions_per_skill=24", "corpus.wiki18.shard_rows=50",
    "questions.max_eval_questions=2", "training.warm_start.n_examples=8", "training.grpo.steps=2",
    "training.grpo.save_every=1", "training.grpo.prompts_per_step=1", "training.grpo.group_size=2",
    "agent.max_response_tokens=64", "agent.max_new_tokens=32", "agent.max_turns=2",
]


def _attempt(artifacts: Path, run_id: str, until: str, fault: str | None, log: Path,
             overrides: Sequence[str] = ()) -> int:
    env = {k: v for k, v in os.environ.items() if k != "SEARCHR1_FAULT"}
    if fault:
        env["SEARCHR1_FAULT"] = fault
    cmd = [sys.executable, "-m", "flows.reproduce", "--run-id", run_id, "--until", until,
           f"run.artifacts_dir={artifacts}", *SMALL, *overrides]
    with log.open("a") as fh:
        fh.write(f"\n$ SEARCHR1_FAULT={fault} {' '.join(cmd)}\n")
        fh.flush()
        # own process group: the temporary Prefect server it started dies with it
        proc = subprocess.Popen(cmd, cwd=PROJECT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
        rc = proc.wait()
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return rc


def _ledger(artifacts: Path, run_id: str) -> list[dict]:
    return read_ledger(ledger_path(artifacts, run_id))


DATA_SUFFIXES = (".parquet", ".jsonl", ".json", ".safetensors", ".faiss", ".npy", ".arrow")
# bookkeeping that differs between runs by design (timings, attempt logs)
VOLATILE = ("_manifest.json", "manifest.json", "metrics.jsonl", "metrics.pending.jsonl", "trainer_state.json",
            "index_meta.json", "checkpoint_complete.json")


def stage_fingerprints(artifacts: Path) -> dict[str, dict[str, str]]:
    """{stage: {relative file: sha256}} of every complete stage output (manifests and logs excluded); where a stage
    holds outputs of several keys (a config or the code changed), the newest published one."""
    out: dict[str, dict[str, str]] = {}
    for manifest in sorted((artifacts / "cache").glob("*/*/_manifest.json"), key=lambda m: m.stat().st_mtime):
        stage_dir = manifest.parent
        files = {}
        for f in sorted(stage_dir.rglob("*")):
            if f.is_file() and f.suffix in DATA_SUFFIXES and f.name not in VOLATILE and "summary" not in f.name:
                files[str(f.relative_to(stage_dir))] = _digest(f, str(Path(artifacts).resolve()))
        out[stage_dir.parent.name] = files
    return out


def _digest(path: Path, root: str) -> str:
    """Content hash; in JSON, paths into the artifacts folder are provenance (they differ per folder) and skipped."""
    data = path.read_bytes()
    if path.suffix == ".json":
        data = json.dumps(_without_paths(json.loads(data), root), sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _without_paths(obj, root: str):
    if isinstance(obj, dict):
        return {k: _without_paths(v, root) for k, v in obj.items() if not (isinstance(v, str) and v.startswith(root))}
    if isinstance(obj, list):
        return [_without_paths(v, root) for v in obj if not (isinstance(v, str) and v.startswith(root))]
    return obj


def incomplete_outputs(artifacts: Path) -> list[str]:
    """Anything that could be mistaken for finished: temp files inside a published stage."""
    bad = []
    for manifest in (artifacts / "cache").glob("*/*/_manifest.json"):
        bad += [str(p) for p in manifest.parent.rglob("*.tmp")]
    return bad


def redone_seconds(ledger: list[dict], stage: str, killed_at: float) -> float | None:
    """Seconds the first completed rebuild of `stage` after the kill took: the work the kill cost."""
    for rec in ledger:
        if rec["time"] > killed_at and rec["stage"] == stage and rec["status"] == "ran":
            return round(rec["seconds"], 1)
    return None


def _mlflow_checks(artifacts: Path, run_id: str) -> dict:
    from searchr1.tracking import PIPELINE_TAG, PipelineTracker

    tracker = PipelineTracker(artifacts, "reproduce-search-r1", run_id)
    runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`{PIPELINE_TAG}` = '{run_id}'")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    duplicated = {}
    for r in runs:
        if r.data.tags.get("searchr1.stage") != "train":
            continue
        for name in r.data.metrics:
            steps = [m.step for m in tracker.client.get_metric_history(r.info.run_id, name)]
            if len(steps) != len(set(steps)):
                duplicated[name] = len(steps) - len(set(steps))
    return {"parent_runs": len(parents), "duplicated_train_steps": duplicated}


def run_chain(out: Path, points: list[str], until: str, overrides: Sequence[str] = ()) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    chaos, reference, log = out / "interrupted", out / "reference", out / "attempts.log"
    run_id = f"fault-injection-{int(time.time())}"
    rows = []
    for point in points:
        once = out / f"fired-{point}"
        before = _ledger(chaos, run_id)
        t0 = time.time()
        rc = _attempt(chaos, run_id, until, f"{point}:kill:{once}", log, overrides)
        after = _ledger(chaos, run_id)[len(before):]
        fired = once.exists()
        started = [r for r in after if r["status"] == "started"]
        killed_stage = started[-1]["stage"] if fired and started else None
        lost = (once.stat().st_mtime - started[-1]["time"]) if fired and started else 0.0
        rows.append({"point": point, "fired": fired, "exit": rc, "killed_stage": killed_stage,
                     "cached_on_entry": [r["stage"] for r in after if r["status"] == "cached"],
                     "recomputed": [r["stage"] for r in after if r["status"] == "ran"],
                     "lost_seconds": round(lost, 1), "attempt_seconds": round(time.time() - t0, 1),
                     "complete_looking_leftovers": incomplete_outputs(chaos)})
        print(json.dumps(rows[-1]), flush=True)
    rc = _attempt(chaos, run_id, until, None, log, overrides)
    final = _ledger(chaos, run_id)
    for r in rows:
        if r["fired"] and r["killed_stage"]:
            killed_at = (out / f"fired-{r['point']}").stat().st_mtime
            r["redone_seconds"] = redone_seconds(final, r["killed_stage"], killed_at)
    rc_ref = _attempt(reference, "reference", until, None, log, overrides)
    fp_chaos, fp_ref = stage_fingerprints(chaos), stage_fingerprints(reference)
    equal = {stage: fp_chaos.get(stage) == fp_ref.get(stage) for stage in sorted(set(fp_chaos) | set(fp_ref))
             if stage != "report"}  # the report links its own MLflow runs
    summary = {"run_id": run_id, "final_exit": rc, "reference_exit": rc_ref, "kills": rows,
               "stage_runs_total": sum(1 for r in final if r["status"] == "ran"),
               "equal_to_reference": equal, "mlflow": _mlflow_checks(chaos, run_id),
               "leftovers": incomplete_outputs(chaos)}
    (out / "fault_injection.json").write_text(json.dumps(summary, indent=2))
    (out / "fault_injection.md").write_text(markdown(summary))
    return summary


def markdown(s: dict) -> str:
    columns = ["kill point", "fired", "killed in", "reused on entry", "completed in the attempt",
               "in stage when killed (s)", "rebuild after resume (s)", "leftovers"]
    lines = [md.table(columns, [
        (r["point"], "yes" if r["fired"] else "no", r["killed_stage"] or "-", ", ".join(r["cached_on_entry"]) or "-",
         ", ".join(r["recomputed"]) or "-", r["lost_seconds"], r.get("redone_seconds", "-"),
         len(r["complete_looking_leftovers"])) for r in s["kills"]])]
    lines += ["", f"Final attempt exit {s['final_exit']}; reference run exit {s['reference_exit']}.",
              "Outputs equal to the uninterrupted reference: " +
              ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in s["equal_to_reference"].items()),
              f"MLflow parent runs for the id: {s['mlflow']['parent_runs']}; duplicated training steps: "
              f"{s['mlflow']['duplicated_train_steps'] or 'none'}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None, prog: str = "python -m flows.fault_injection") -> int:
    from flows.reproduce import STAGES

    ap = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=PROJECT / "artifacts" / "fault-injection",
                    help="folder for the attempts, the reference run and the result tables (default: %(default)s)")
    ap.add_argument("--until", default="report", choices=STAGES, metavar="STAGE",
                    help=f"last stage of the chain: {', '.join(STAGES)} (default: %(default)s)")
    ap.add_argument("--points", action="extend", type=lambda text: text.split(","), default=None, metavar="P1,P2",
                    help=f"kill points, comma-separated or repeated (default: all up to --until): {', '.join(POINTS)}")
    ap.add_argument("overrides", nargs="*", metavar="key.sub=value",
                    help="config overrides on top of the shrunk tiny profile this check runs")
    args = ap.parse_intermixed_args(argv)
    allowed = STAGES[: STAGES.index(args.until) + 1]
    unknown = [p for p in args.points or [] if p not in POINTS]
    late = [p for p in args.points or [] if p in POINTS and p.split(".")[0] not in allowed]
    if unknown or late:
        what = f"unknown kill point(s) {', '.join(unknown)}; expected some of {', '.join(POINTS)}" if unknown else \
            f"kill point(s) {', '.join(late)} lie after --until {args.until}"
        ap.error(f"--points: {what}")
    from searchr1.config import ConfigError, load_config

    try:  # a wrong key fails here, not in the first of many attempts
        load_config(PROJECT / "configs" / "tiny.yaml", [*SMALL, *args.overrides])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    points = args.points or [p for p in POINTS if p.split(".")[0] in allowed]
    summary = run_chain(args.out.resolve(), points, args.until, args.overrides)
    print(markdown(summary))
    ok = (summary["final_exit"] == 0 and all(summary["equal_to_reference"].values())
          and summary["mlflow"]["parent_runs"] == 1 and not summary["leftovers"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
