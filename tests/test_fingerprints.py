"""`searchr1 fingerprints`: the same run twice agrees file for file, and a differing file is named."""

from __future__ import annotations

import json
from pathlib import Path

from flows.fingerprints import main


def _run(root: Path, answer: str, key: str = "abc123") -> Path:
    stage = root / "cache" / "evaluate" / key
    stage.mkdir(parents=True)
    (stage / "_manifest.json").write_text(json.dumps({"created": str(root)}))  # bookkeeping: not hashed
    (stage / "results.json").write_text(json.dumps({"bridge": answer}))
    (stage / "rollouts").mkdir()
    (stage / "rollouts" / "a.jsonl").write_text('{"em": 1}\n')
    return root


def test_the_same_outputs_compare_identical_and_a_changed_file_is_named(tmp_path, capsys):
    saved = tmp_path / "a.json"
    assert main(["--artifacts", str(_run(tmp_path / "a", "40.6")), "--save", str(saved)]) == 0
    assert main(["--artifacts", str(_run(tmp_path / "b", "40.6")), "--compare", str(saved)]) == 0
    assert "every file of every stage is identical" in capsys.readouterr().out
    assert main(["--artifacts", str(_run(tmp_path / "c", "41.0")), "--compare", str(saved)]) == 1
    out = capsys.readouterr().out
    assert "evaluate/results.json: differs" in out and "rollouts/a.jsonl" not in out


def test_of_a_stage_with_outputs_of_several_keys_the_newest_counts(tmp_path, capsys):
    import os

    saved = tmp_path / "a.json"
    assert main(["--artifacts", str(_run(tmp_path / "a", "40.6")), "--save", str(saved)]) == 0
    both = _run(tmp_path / "b", "40.6", key="aaa111")  # the newest output sorts first by name
    _run(both, "12.5", key="zzz999")
    os.utime(both / "cache" / "evaluate" / "zzz999" / "_manifest.json", (1, 1))  # published long ago
    assert main(["--artifacts", str(both), "--compare", str(saved)]) == 0
