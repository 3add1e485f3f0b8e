"""Bad input, end to end: each case gives one clear error naming the place and the expectation, a
non-zero exit, and no stage registered as complete. Cases run in-process through the CLI's `main(argv)`
or the flow; one case runs `python -m flows.reproduce` in a subprocess, as a user would.

| case | where it is caught | the message names |
|---|---|---|
| unknown config key | load_config, before Prefect starts | the key path |
| wrong type / impossible value (topk 0, lr < 0, group size 1) | load_config | key, value, expectation |
| missing model files | flow start, before any stage | the package or folder |
| malformed / truncated JSONL, missing or mistyped fields, non-UTF-8 bytes | corpus stage | file:line and reason |
| empty file, zero rows, duplicate ids | corpus / questions stage | file (and line) and reason |
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from flows.reproduce import main, reproduce
from searchr1.corpus.jsonl import DataError

PROJECT = Path(__file__).resolve().parents[1]

CONFIG_CASES = [
    ("unknown key", ["training.grpo.lr=1e-6"], "unknown key 'training.grpo.lr'"),
    ("wrong type", ["training.grpo.steps=many"], "key 'training.grpo.steps' = 'many': Input should be a valid integer"),
    ("topk 0", ["retrieval.topk=0"], "key 'retrieval.topk' = 0: Input should be greater than 0"),
    ("negative lr", ["training.grpo.learning_rate=-1e-6"], "key 'training.grpo.learning_rate' = -1e-06"),
    ("group size 1", ["training.grpo.group_size=1"], "key 'training.grpo.group_size' = 1: Input should be greater"),
    ("missing model", ["policy.model=wheel:no_such_model_pkg"], "model package 'no_such_model_pkg' is not installed"),
    ("missing folder", ["policy.model=./no/such/folder"], "model folder './no/such/folder' does not exist"),
]


@pytest.mark.parametrize("name,overrides,message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_is_one_clear_line_and_exit_2(tmp_path, capsys, name, overrides, message):
    assert main([f"run.artifacts_dir={tmp_path}", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "cache").exists()


@pytest.mark.slow
def test_bad_config_from_the_shell_exits_2_without_a_traceback(tmp_path):
    """The one subprocess case: the real entry point, its exit status and what reaches the terminal."""
    proc = subprocess.run([sys.executable, "-m", "flows.reproduce", f"run.artifacts_dir={tmp_path}",
                           *CONFIG_CASES[0][1]], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert CONFIG_CASES[0][2] in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()


GOOD = '{"id": "0", "contents": "\\"A\\"\\ntext"}\n'
DATA_CASES = [
    ("truncated JSON", GOOD + '{"id": "1", "conte', ":2: bad JSON"),
    ("missing contents", GOOD + '{"id": "1"}\n', ":2: missing field: 'contents'"),
    ("mistyped id", GOOD + '{"id": [1], "contents": "x"}\n', ":2: wrong type: 'id'"),
    ("non-UTF-8", GOOD.encode() + b'{"id": "1", "contents": "\xff"}\n', ":2: not UTF-8"),
    ("empty file", "", "no valid rows"),
    ("only blank lines", "\n\n", "no valid rows"),
]


@pytest.mark.slow  # runs the flow on the Prefect test server
@pytest.mark.parametrize("name,content,message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_corpus_stops_the_stage_and_registers_nothing(prefect_server, tmp_path, name, content, message):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(content.encode() if isinstance(content, str) else content)
    over = [f"run.artifacts_dir={tmp_path / 'art'}", "corpus.source=wiki18", f"corpus.wiki18.local_path={corpus}"]
    with pytest.raises(DataError) as err:
        reproduce(overrides=over, until="corpus")
    assert str(err.value).startswith(str(corpus))
    assert message in str(err.value)
    assert not list((tmp_path / "art" / "cache").rglob("_manifest.json"))


@pytest.mark.slow
def test_bad_corpus_through_the_cli_exits_non_zero(prefect_server, tmp_path, capsys):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(GOOD + GOOD)
    assert main(["--until", "corpus", f"run.artifacts_dir={tmp_path / 'art'}", "corpus.source=wiki18",
                 f"corpus.wiki18.local_path={corpus}"]) == 2
    assert f"error: {corpus}:2: duplicate id: '0'" in capsys.readouterr().err
    assert not list((tmp_path / "art" / "cache").rglob("_manifest.json"))


@pytest.mark.slow  # runs the flow on the Prefect test server
def test_zero_question_benchmark_is_refused(prefect_server, tmp_path):
    (tmp_path / "nq").mkdir()
    (tmp_path / "nq" / "test.jsonl").write_text("")
    over = [f"run.artifacts_dir={tmp_path / 'art'}", "questions.source=flashrag", f"questions.local_dir={tmp_path}",
            "questions.eval_benchmarks=[nq]", "questions.train_benchmarks=[]"]
    with pytest.raises(DataError, match=r"nq/test.jsonl: no valid rows"):
        reproduce(overrides=over, until="questions")
