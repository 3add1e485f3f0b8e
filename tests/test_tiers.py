"""The test tiers themselves: a skipped core test fails the run; the optional tiers may skip."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from searchr1.corpus.samples import SampleFiles, reference_samples, write_samples

TESTS = Path(__file__).resolve().parent

SESSION = '''
import pytest

def test_passes():
    pass

@pytest.mark.realdata
def test_real(reference_data):
    pass
'''
CORE_SKIP = '''
def test_core_skips():
    pytest.skip("some file is missing")
'''


def run_session(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    """A pytest session under this suite's conftest.py, with no reference data beside it."""
    shutil.copy(TESTS / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(body)
    env = {**os.environ, "SEARCHR1_REFERENCE_DATA": str(tmp_path / "no-such-folder"),
           "PYTHONPATH": os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_a_skipped_core_test_fails_the_run_and_is_named(tmp_path):
    proc = run_session(tmp_path, SESSION + CORE_SKIP)
    assert proc.returncode == 1, proc.stdout
    assert "1 core test(s) skipped" in proc.stdout
    assert "test_sample.py::test_core_skips: some file is missing" in proc.stdout
    assert "test_sample.py::test_real:" not in proc.stdout.split("core test(s) skipped")[1]


@pytest.mark.slow
def test_realdata_skips_name_the_missing_path_and_pass(tmp_path):
    proc = run_session(tmp_path, SESSION)
    assert proc.returncode == 0, proc.stdout
    assert "1 passed, 1 skipped" in proc.stdout
    assert f"realdata tier: reference samples not found: {tmp_path / 'no-such-folder'}" in proc.stdout


def test_generated_samples_are_deterministic_and_in_the_real_formats(tmp_path):
    a, b = write_samples(tmp_path / "a", n_passages=120), write_samples(tmp_path / "b", n_passages=120)
    assert a.passages.read_bytes() == b.passages.read_bytes()
    assert a.passages_gz.read_bytes() == b.passages_gz.read_bytes()
    rows = a.passage_rows()
    assert [r["id"] for r in rows] == [str(i) for i in range(120)]
    assert all(set(r) == {"id", "contents"} and r["contents"].startswith('"') and '"\n' in r["contents"]
               for r in rows)
    questions = a.question_rows()
    assert len(questions) == 17 and all(set(q) == {"id", "question", "golden_answers"} for q in questions)
    assert write_samples(tmp_path / "c", n_passages=120, seed=1).passages.read_bytes() != a.passages.read_bytes()


def test_missing_reference_samples_are_named(tmp_path):
    (tmp_path / "wiki18-format").mkdir()
    (tmp_path / "wiki18-format" / "flashrag_sample_1000.jsonl").write_text('{"id": "0", "contents": "x"}\n')
    with pytest.raises(FileNotFoundError, match=r"reference samples not found: .*nq_test_sample.jsonl \("):
        reference_samples(tmp_path)
    with pytest.raises(ValueError, match="n_questions=500 but a world of 50 passages yields only"):
        write_samples(tmp_path / "gen", n_passages=50, n_questions=500)


def test_sample_data_fixture_gives_generated_files(sample_data: SampleFiles):
    """Each half of the pair (generated; reference in the realdata tier) is a readable set of files."""
    assert sample_data.passages.is_file() and sample_data.questions.is_file()
    assert len(sample_data.passage_rows(5)) == 5
