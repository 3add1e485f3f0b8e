"""Resuming a training run that had already reached its last step (fast: no model is loaded)."""

from __future__ import annotations

import json

from searchr1.config import config_from_dict
from searchr1.training.checkpoints import COMPLETE_MARKER, checkpoints_dir, step_name
from searchr1.training.grpo import train_grpo


def test_resume_at_the_last_step_returns_without_training(tmp_path):
    cfg = config_from_dict({"training": {"grpo": {"steps": 2, "save_every": 1}}})
    work = tmp_path / "train"
    for step in (1, 2):
        ck = checkpoints_dir(work) / step_name(step)
        ck.mkdir(parents=True)
        (ck / "config.json").write_text("{}")
        (ck / COMPLETE_MARKER).write_text(json.dumps({"step": step}))
    (work / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "em": s / 4}) + "\n" for s in (1, 2)))
    # the policy path and training data do not exist: touching either would raise
    out = train_grpo(tmp_path / "no-policy", tmp_path / "no-data", searcher=None, cfg=cfg, work_dir=work)
    assert out["steps"] == 2 and out["resumed_from_step"] == 2 and out["history"] == []
    assert out["last"] == {"step": 2, "em": 0.5}
    assert [p.rsplit("/", 1)[-1] for p in out["checkpoints"]] == ["step-000001", "step-000002"]
