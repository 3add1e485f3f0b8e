"""The whole flow on a micro world: every stage's task (warm start, GRPO, evaluation, reflection, report) runs
through Prefect with the real policy, and a second run of the same config, in the artifacts folder moved elsewhere,
reuses every stage.

`make run` is the only other thing that executes the tasks after train-data; this keeps their glue (what each
hands the next, what the report reads) under CI. Sizes are the smallest that still exercise every path:
3 questions a suite, one GRPO step of one group, the transformers generator (vLLM is an optional tier).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_flow import SMALL, ledger, statuses

from flows.reproduce import STAGES, reproduce

pytestmark = pytest.mark.slow  # a Prefect server, the 135M policy trained and evaluated

MICRO = SMALL + [
    "questions.max_eval_questions=3",
    "agent.generator=transformers", "agent.max_turns=2", "agent.max_new_tokens=24", "agent.batch_size=12",
    "training.warm_start.n_examples=4", "training.warm_start.batch_size=4", "training.warm_start.epochs=1",
    "training.grpo.steps=1", "training.grpo.prompts_per_step=1", "training.grpo.group_size=2",
    "training.grpo.refill_rounds=0", "training.grpo.rollout_generator=transformers",
    "training.grpo.micro_batch_size=2", "reflection.bootstrap_samples=50",
]


def test_every_stage_runs_then_a_rerun_in_a_moved_folder_reuses_them_all(prefect_server, tmp_path):
    first = tmp_path / "first"
    paths = {name: Path(p) for name, p in reproduce(overrides=MICRO + [f"run.artifacts_dir={first}"],
                                                      pipeline_run_id="e2e-1").items()}
    assert list(paths) == list(STAGES)
    assert statuses(ledger(first, "e2e-1")) == [(s, "ran") for s in STAGES]

    assert (paths["warm-start"] / "model" / "model.safetensors").is_file()
    assert (paths["train"] / "checkpoints" / "step-000001" / "model.safetensors").is_file()
    rollouts = paths["evaluate"] / "rollouts"
    assert sorted(p.name for p in rollouts.iterdir()) == ["base", "step-000001", "warm-start"]
    results = (paths["evaluate"] / "results.md").read_text()
    assert "search_agent @ warm-start" in results and "search_agent @ step-000001" in results

    report = (paths["report"] / "report.md").read_text()
    hops = report.split("## Searches against the hops each question needs", 1)[1].split("\n## ", 1)[0]
    for ckpt in ("base", "warm-start", "step-000001"):  # each evaluated policy counted on the 1-, 2-, 3-hop suites
        assert f"| {ckpt} | 1 | 3 |" in hops and f"| {ckpt} | 2 | 6 |" in hops and f"| {ckpt} | 3 | 3 |" in hops
    assert (paths["report"] / "hops.png").is_file() and (paths["report"] / "report.html").is_file()
    analysis = json.loads((paths["reflection"] / "analysis.json").read_text())
    assert analysis  # the reflection stage read the evaluation's rollouts

    # The artifacts folder moved (a new disk, a copy on another machine): no key holds where it lies, so every
    # stage is reused; the report is keyed by its pipeline run (it links that run's MLflow runs) and rebuilt.
    moved = tmp_path / "moved"
    shutil.move(first, moved)
    again = reproduce(overrides=MICRO + [f"run.artifacts_dir={moved}"], pipeline_run_id="e2e-2")
    assert statuses(ledger(moved, "e2e-2")) == [(s, "cached") for s in STAGES[:-1]] + [("report", "ran")]
    assert {k: v for k, v in again.items() if k != "report"} == {
        k: str(moved / Path(v).relative_to(first)) for k, v in paths.items() if k != "report"}

    # `searchr1 grpo-streams` from that run's warm start: the run's own stream repeats its GRPO stage byte for byte,
    # and the table gives its gain over the warm start the run's evaluation scored
    from searchr1.grpo_streams import main as streams_main

    out = tmp_path / "streams"
    assert streams_main(["--seeds", "0", "--artifacts", str(moved), "--run-id", "e2e-2", "--out", str(out),
                         *MICRO, f"run.artifacts_dir={moved}"]) == 0
    ckpt = "checkpoints/step-000001/model.safetensors"
    assert (out / "seed-0" / "train" / ckpt).read_bytes() == (Path(again["train"]) / ckpt).read_bytes()
    table = (out / "streams.md").read_text()
    assert "| seed | step 1 | best | best step | gain |" in table and (out / "streams.png").is_file()
    import pandas as pd

    rows = pd.read_parquet(out / "streams.parquet")
    stream_em = rows[(rows.step == 1) & (rows.benchmark == "average")].value.tolist()
    flow_em = json.loads((Path(again["evaluate"]) / "_manifest.json").read_text())["summary"]
    assert stream_em == [pytest.approx(flow_em["search_agent_average_em"]["1"])]  # the same checkpoint, scored again
