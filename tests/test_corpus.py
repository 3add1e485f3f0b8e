"""Corpus and question loaders: the synthetic world and the real formats, bad lines included."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from searchr1.config import PipelineConfig, config_from_dict
from searchr1.corpus import build, sources, synthetic
from searchr1.corpus.config import SyntheticWorldConfig
from searchr1.corpus.jsonl import PASSAGE_FIELDS, QUESTION_FIELDS, DataError, ReadStats, read_jsonl
from searchr1.corpus.samples import SampleFiles

SMALL_WORLD = SyntheticWorldConfig(n_people=60, n_places=15, n_organisations=12, n_works=40, questions_per_skill=40)


def test_world_is_deterministic_and_seed_dependent():
    a = [p for _, p in synthetic.render_passages(synthetic.build_world(SMALL_WORLD), 0)]
    b = [p for _, p in synthetic.render_passages(synthetic.build_world(SMALL_WORLD), 0)]
    other = SMALL_WORLD.model_copy(update={"seed": 1})
    c = [p for _, p in synthetic.render_passages(synthetic.build_world(other), 1)]
    assert a == b
    assert a != c


def test_every_answer_is_in_its_supporting_passages_and_not_in_the_question():
    world = synthetic.build_world(SMALL_WORLD)
    passages = {p["id"]: p["contents"] for _, p in synthetic.render_passages(world, SMALL_WORLD.seed)}
    suites = synthetic.build_questions(world, SMALL_WORLD)
    for skill, splits in suites.items():
        assert splits["train"] and splits["test"], skill
        for q in splits["train"] + splits["test"]:
            evidence = " ".join(passages[i] for i in q["metadata"]["supporting_ids"])
            assert any(a in evidence for a in q["golden_answers"]), q
            if skill != "comparison":  # a comparison names both candidates by design
                assert not any(a in q["question"] for a in q["golden_answers"]), q
            # a passage is not a copy of its question: no supporting passage contains the question's text
            assert q["question"].rstrip("?") not in evidence


def test_each_hop_result_is_the_next_hops_entity_and_the_last_is_the_answer():
    """metadata.hop_answers chains the hops: what hop i finds is what hop i+1 asks about, and the last hop finds the
    answer; a comparison's hops find the two years the answer is chosen by."""
    world = synthetic.build_world(SMALL_WORLD)
    for skill, splits in synthetic.build_questions(world, SMALL_WORLD).items():
        for q in splits["train"] + splits["test"]:
            meta = q["metadata"]
            assert len(meta["hop_answers"]) == len(meta["hop_queries"]) == len(meta["hop_entities"]), q
            for i, query in enumerate(meta["hop_queries"]):
                assert query.startswith(meta["hop_entities"][i] + " "), q
            if skill == "comparison":
                assert all(a.isdigit() for a in meta["hop_answers"]) and len(set(meta["hop_answers"])) == 2, q
                continue
            assert meta["hop_answers"][:-1] == meta["hop_entities"][1:], q
            assert meta["hop_answers"][-1] == q["golden_answers"][0], q


def test_question_split_is_by_subject_entity():
    world = synthetic.build_world(SMALL_WORLD)
    suites = synthetic.build_questions(world, SMALL_WORLD)
    for splits in suites.values():
        train_ids = {tuple(q["metadata"]["supporting_ids"][:2]) for q in splits["train"]}
        test_ids = {tuple(q["metadata"]["supporting_ids"][:2]) for q in splits["test"]}
        assert not train_ids & test_ids


def _write(path: Path, lines: list[bytes | str]) -> Path:
    path.write_bytes(b"".join((x if isinstance(x, bytes) else x.encode()) + b"\n" for x in lines))
    return path


BAD_PASSAGE_LINES = [
    ('{"id": 1, "contents": "\\"T\\"\\nx"', "bad JSON"),
    ('{"contents": "x"}', "missing field: 'id'"),
    ('{"id": "1"}', "missing field: 'contents'"),
    ('{"id": "1", "contents": 5}', "wrong type: 'contents'"),
    ('{"id": true, "contents": "x"}', "wrong type: 'id'"),
    ('["id", "contents"]', "expected a JSON object"),
    (b'{"id": "1", "contents": "caf\xe9"}', "not UTF-8"),
]


@pytest.mark.parametrize("line,reason", BAD_PASSAGE_LINES)
def test_bad_passage_line_names_file_line_and_reason(tmp_path, line, reason):
    path = _write(tmp_path / "c.jsonl", ['{"id": "0", "contents": "\\"A\\"\\nok"}', line])
    with pytest.raises(DataError) as err:
        list(read_jsonl(path, PASSAGE_FIELDS))
    assert f"{path}:2:" in str(err.value) and reason in str(err.value)


def test_bad_lines_are_counted_when_skipping(tmp_path):
    path = _write(tmp_path / "c.jsonl", ['{"id": "0", "contents": "ok"}'] + [x for x, _ in BAD_PASSAGE_LINES])
    stats = ReadStats(str(path))
    rows = list(read_jsonl(path, PASSAGE_FIELDS, "skip", stats))
    assert [r["id"] for r in rows] == ["0"]
    assert stats.skipped == len(BAD_PASSAGE_LINES)
    assert sum(stats.reasons.values()) == stats.skipped


def test_duplicate_ids_and_empty_files_are_refused(tmp_path):
    dup = _write(tmp_path / "d.jsonl", ['{"id": "0", "contents": "a"}', '{"id": 0, "contents": "b"}'])
    with pytest.raises(DataError, match=r"d.jsonl:2: duplicate id"):
        list(read_jsonl(dup, PASSAGE_FIELDS))
    empty = _write(tmp_path / "e.jsonl", [])
    with pytest.raises(DataError, match="no valid rows"):
        list(read_jsonl(empty, PASSAGE_FIELDS))
    with pytest.raises(DataError, match="file not found"):
        list(read_jsonl(tmp_path / "missing.jsonl", PASSAGE_FIELDS))


def test_question_fields_are_checked(tmp_path):
    path = _write(tmp_path / "q.jsonl", ['{"id": "a", "question": "q?", "golden_answers": "x"}'])
    with pytest.raises(DataError, match=r"q.jsonl:1: wrong type: 'golden_answers'.*non-empty list of strings"):
        sources.read_questions(path)
    assert QUESTION_FIELDS.keys() == {"id", "question", "golden_answers"}


def test_wiki18_sample_streams_into_resumable_shards(tmp_path, sample_data: SampleFiles):
    src = sample_data.passages
    gz = sample_data.passages_gz
    if gz is None:  # the reference samples ship uncompressed; wiki-18 itself is a .jsonl.gz
        gz = tmp_path / "wiki.jsonl.gz"
        gz.write_bytes(gzip.compress(src.read_bytes()))
    cfg = config_from_dict({"corpus": {"source": "wiki18", "wiki18": {"local_path": str(gz), "shard_rows": 300}}})
    out = tmp_path / "corpus"
    summary = build.build_corpus(cfg, out)
    assert summary["passages"] == 1000 and summary["shards"] == 4
    table = pq.read_table(out / "passages" / "part-00000.parquet")
    first = json.loads(src.read_text().splitlines()[0])
    assert table.column_names == ["id", "contents"]
    assert table.column("contents")[0].as_py() == first["contents"]
    # a killed run left shards 0-1: the restart keeps them (same bytes) and writes the rest
    (out / "passages" / "part-00003.parquet").unlink()
    before = (out / "passages" / "part-00001.parquet").stat().st_mtime_ns
    assert build.build_corpus(cfg, out)["passages"] == 1000
    assert (out / "passages" / "part-00001.parquet").stat().st_mtime_ns == before
    assert (out / "passages" / "part-00003.parquet").exists()


def test_wiki18_hub_path_downloads_the_configured_file(tmp_path, monkeypatch):
    local = _write(tmp_path / "w.jsonl", ['{"id": "0", "contents": "\\"T\\"\\nx"}'])
    calls = []
    monkeypatch.setattr(build, "hub_download", lambda repo, name: calls.append((repo, name)) or local)
    build.build_corpus(PipelineConfig.model_validate({"corpus": {"source": "wiki18"}}), tmp_path / "out")
    assert calls == [("PeterJinGo/wiki-18-corpus", "wiki-18.jsonl.gz")]


def test_flashrag_benchmarks_from_a_local_dir(tmp_path, sample_data: SampleFiles):
    (tmp_path / "nq").mkdir()
    (tmp_path / "nq" / "test.jsonl").write_bytes(sample_data.questions.read_bytes())
    (tmp_path / "nq" / "train.jsonl").write_bytes(sample_data.questions.read_bytes())
    cfg = config_from_dict({"questions": {"source": "flashrag", "local_dir": str(tmp_path),
                                          "eval_benchmarks": ["nq"], "train_benchmarks": ["nq"],
                                          "max_eval_questions": 5}})
    out = tmp_path / "q"
    summary = build.build_question_sets(cfg, out)
    assert summary["counts"] == {"nq/train": 17, "nq/test": 5}
    loaded = build.load_question_sets(out, ["nq"], "test")["nq"]
    assert all(isinstance(q["golden_answers"], list) and q["question"] for q in loaded)


def test_missing_local_benchmark_is_a_clear_error(tmp_path):
    cfg = config_from_dict({"questions": {"source": "flashrag", "local_dir": str(tmp_path),
                                          "eval_benchmarks": ["musique"], "train_benchmarks": []}})
    with pytest.raises(DataError, match=r"musique/dev.jsonl: benchmark file not found"):
        build.build_question_sets(cfg, tmp_path / "q")


def test_synthetic_question_sets_stage(tmp_path):
    cfg = PipelineConfig.model_validate({"corpus": {"synthetic": SMALL_WORLD.model_dump()}})
    summary = build.build_question_sets(cfg, tmp_path)
    assert set(summary["counts"]) == {f"{s}/{split}" for s in synthetic.SKILLS for split in ("train", "test")}
    qs = build.load_question_sets(tmp_path, ["bridge"], "test")["bridge"]
    assert len(qs[0]["metadata"]["hop_queries"]) == 2
