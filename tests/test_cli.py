"""`searchr1`: every subcommand answers --help under its own name, and refuses bad input with a message
that names the key or value at fault (exit 2), before doing any work. In-process through main(argv)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from searchr1.cli import COMMANDS, find_report, main

PROJECT = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_overview_lists_every_command(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for command in COMMANDS:
        assert f"  {command.name} " in out
    assert run(capsys)[0] == 2  # no command: the overview, as a usage error


@pytest.mark.parametrize("words", [c.words for c in COMMANDS], ids=[c.name for c in COMMANDS])
def test_help_of_each_command(capsys, words):
    code, out, _ = run(capsys, *words, "--help")
    assert code == 0
    assert out.startswith(f"usage: searchr1 {' '.join(words)}")


def test_unknown_commands_are_named(capsys):
    code, _, err = run(capsys, "trian")
    assert code == 2 and "unknown command 'trian'" in err and "run, ask" in err
    code, _, err = run(capsys, "retriever", "start")
    assert code == 2 and "'retriever start'" in err and "serve" in err


def test_run_refuses_a_bad_stage_and_a_bad_key(capsys, tmp_path):
    code, _, err = run(capsys, "run", "--until", "evalute")
    assert code == 2 and "--until" in err and "'evalute'" in err
    code, _, err = run(capsys, "run", f"run.artifacts_dir={tmp_path}", "training.grpo.group_sise=4")
    assert code == 2 and "'training.grpo.group_sise'" in err
    assert not (tmp_path / "cache").exists()


def test_ask_refuses_a_bad_override(capsys, tmp_path):
    code, _, err = run(capsys, "ask", "Who wrote it?", "--index", str(tmp_path), "agent.max_turns=many")
    assert code == 2 and "'agent.max_turns'" in err and "'many'" in err


def test_retriever_serve_refuses_a_bad_override_and_a_missing_index(capsys, tmp_path):
    code, _, err = run(capsys, "retriever", "serve", "--index", str(tmp_path), "retrieval.topk_max=3")
    assert code == 2 and "'retrieval.topk_max'" in err
    code, _, err = run(capsys, "retriever", "serve", "--index", str(tmp_path / "nope"))
    assert code == 2 and f"--index {tmp_path / 'nope'}" in err


def test_verl_render_refuses_a_bad_override(capsys, tmp_path):
    code, _, err = run(capsys, "verl", "render", "--config", str(PROJECT / "configs" / "paper.yaml"),
                       "--out", str(tmp_path), "training.grpo.steps=-3")
    assert code == 2 and "'training.grpo.steps'" in err
    assert not any(tmp_path.iterdir())  # nothing rendered


def test_verl_launch_needs_its_config(capsys, tmp_path):
    code, _, err = run(capsys, "verl", "launch", "--out", str(tmp_path))
    assert code == 2 and "--config" in err


def test_fault_injection_refuses_unknown_points_and_keys(capsys, tmp_path):
    code, _, err = run(capsys, "fault-injection", "--out", str(tmp_path), "--points", "train.after_stpe")
    assert code == 2 and "train.after_stpe" in err
    code, _, err = run(capsys, "fault-injection", "--out", str(tmp_path), "--until", "index",
                       "--points", "train.after_step")
    assert code == 2 and "train.after_step" in err and "after --until index" in err
    code, _, err = run(capsys, "fault-injection", "--out", str(tmp_path), "corpus.synthetic.n_peeple=3")
    assert code == 2 and "'corpus.synthetic.n_peeple'" in err
    assert not any(tmp_path.iterdir())  # no attempt started


def _fake_report(artifacts: Path, key: str, run_id: str | None = None) -> Path:
    folder = artifacts / "cache" / "report" / key
    folder.mkdir(parents=True)
    (folder / "report.html").write_text("<html></html>")
    (folder / "_manifest.json").write_text("{}")
    if run_id:
        ledger = artifacts / "runs" / run_id / "stages.jsonl"
        ledger.parent.mkdir(parents=True)
        ledger.write_text(json.dumps({"stage": "report", "key": key, "status": "ran"}) + "\n")
    return folder / "report.html"


def test_report_open_finds_reports_and_names_a_wrong_run_id(capsys, tmp_path):
    code, _, err = run(capsys, "report", "open", "--artifacts", str(tmp_path))
    assert code == 2 and "no report under" in err
    first = _fake_report(tmp_path, "aaa", run_id="run-1")
    code, out, _ = run(capsys, "report", "open", "--artifacts", str(tmp_path))
    assert code == 0 and out.strip() == str(first)
    code, _, err = run(capsys, "report", "open", "--artifacts", str(tmp_path), "--run-id", "run-2")
    assert code == 2 and "'run-2'" in err and "run-1" in err  # names the id and the ones that exist
    assert find_report(tmp_path, "run-1") == first
    # a work folder (no manifest) is not a report
    (tmp_path / "cache" / "report" / "bbb.work").mkdir()
    (tmp_path / "cache" / "report" / "bbb.work" / "report.html").write_text("half")
    assert find_report(tmp_path) == first


def test_grpo_streams_names_a_missing_warm_start_a_bad_ledger_line_and_bad_seeds(capsys, tmp_path):
    code, _, err = run(capsys, "grpo-streams", "--artifacts", str(tmp_path))
    assert code == 2 and "no pipeline run under" in err and "--until warm-start" in err
    ledger = tmp_path / "runs" / "r1" / "stages.jsonl"
    ledger.parent.mkdir(parents=True)
    ledger.write_text('{"stage": "corpus", "key": "k", "status": "ran"}\nnot json\n')
    code, _, err = run(capsys, "grpo-streams", "--artifacts", str(tmp_path), "--run-id", "r1")
    assert code == 2 and f"{ledger}:2: expected one JSON object a line" in err
    code, _, err = run(capsys, "grpo-streams", "--artifacts", str(tmp_path), "--run-id", "r2")
    assert code == 2 and "--run-id 'r2': no ledger" in err
    code, _, err = run(capsys, "grpo-streams", "--seeds", "one,two")
    assert code == 2 and "--seeds 'one,two': expected integers" in err


def test_serve_status_stop_refuse_a_bad_port_or_profile(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    code, _, err = run(capsys, "serve", "huge")
    assert code == 2 and "huge" in err
    monkeypatch.setenv("PREFECT_PORT", "42OO")
    code, _, err = run(capsys, "serve")
    assert code == 1 and "PREFECT_PORT='42OO'" in err
    code, _, err = run(capsys, "status")
    assert code == 2 and "PREFECT_PORT='42OO'" in err
    code, _, err = run(capsys, "stop", "--now")
    assert code == 2 and "--now" in err


def test_console_script_runs():
    """The one subprocess: the entry point pyproject declares, as `make setup` installs it."""
    from importlib.metadata import entry_points

    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "searchr1"]
    assert script.value == "searchr1.cli:main"
    proc = subprocess.run([sys.executable, "-c", f"import sys; from {script.module} import {script.attr}; "
                           f"sys.exit({script.attr}(['ask', '--help']))"],
                          capture_output=True, text=True, timeout=120, cwd=PROJECT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: searchr1 ask")
