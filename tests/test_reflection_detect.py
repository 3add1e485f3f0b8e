"""Reflective-phrase detection: the lexicon, word boundaries, and what counts as the model's own text."""

from __future__ import annotations

import math

import pytest

from searchr1.reflection.detect import count_in_segments, find_phrases, reflective_ratio
from searchr1.reflection.lexicon import SEED_PHRASES, LexiconError, default_lexicon, load_lexicon, parse_lexicon


def phrases(text: str, lexicon=None) -> list[str]:
    return [m.phrase for m in find_phrases(text, lexicon)]


def test_default_lexicon_has_the_seed_phrases_and_more():
    lex = default_lexicon()
    texts = {p.text for p in lex.phrases}
    assert set(SEED_PHRASES) <= texts
    assert len(texts) > len(SEED_PHRASES) + 10
    assert "seed" in lex.categories and "verification" in lex.categories


@pytest.mark.parametrize("text, expected", [
    ("Wait, the search says 1954.", ["wait"]),
    ("WAIT. Let me re-verify that.", ["wait", "let me re-verify"]),
    ("Upon closer inspection the date differs.", ["upon closer inspection"]),
    ("On second thought, Paris.", ["on second thought"]),
    ("Let’s reconsider the second passage.", ["let's reconsider"]),   # typographic apostrophe
    ("let me  reverify\nit", ["let me re-verify"]),                     # hyphen and spacing variants
    ("Hmm... wait", ["hmm", "wait"]),
])
def test_finds_phrases_case_insensitively(text, expected):
    assert phrases(text) == expected


@pytest.mark.parametrize("text", [
    "The waiter brought the bill.",
    "She awaited the verdict; he waits; they waited.",
    "Rechecking, reconsidered, reconsideration, unverified.",
    "The hmmm sound.",
    "The second thought experiment",  # 'on second thought' needs its 'on'
    "coupon closer inspection",        # 'upon' inside a word
])
def test_near_misses_do_not_match(text):
    assert phrases(text) == []


def test_longest_phrase_wins_and_is_counted_once():
    lex = parse_lexicon("[a]\nlet me\nlet me check\ncheck\n")
    assert phrases("Let me check it", lex) == ["let me check"]


def test_only_assistant_text_counts():
    segments = [
        {"role": "assistant", "text": "<think>I need the year.</think><tool_call>{}</tool_call>"},
        {"role": "tool", "text": "<tool_response>Wait, upon closer inspection, the waiter said...</tool_response>"},
        {"role": "assistant",
         "text": "<think>Wait, the passage says 1954. Let me verify.</think><answer>1954</answer>"},
    ]
    c = count_in_segments(segments)
    assert c["reflective"] is True
    assert c["phrases"] == {"wait": 1, "let me verify": 1}
    assert c["turns"] == [2, 2]
    assert c["categories"] == {"seed": 1, "verification": 1}


def test_prompt_and_retrieved_text_alone_are_not_reflective():
    # the prompt is never a segment; a phrase only inside retrieved text must not count
    segments = [
        {"role": "assistant", "text": '<tool_call>{"name": "search", "arguments": {"query_list": ["x"]}}</tool_call>'},
        {"role": "tool", "text": "Doc 1(Title: Wait Until Dark) On second thought, the film..."},
        {"role": "assistant", "text": "<answer>Wait Until Dark</answer>"},
    ]
    assert count_in_segments(segments) == {"reflective": False, "n_phrases": 0, "phrases": {},
                                           "categories": {}, "turns": []}


def test_prompt_segments_never_count():
    # should a caller keep the prompt with the segments, only the assistant's own text is searched
    segments = [
        {"role": "system", "text": "You are helpful. Wait for the search results; let me re-verify is a phrase."},
        {"role": "user", "text": "Question: on second thought, who wrote it?"},
        {"role": "assistant", "text": "<answer>Orwell</answer>"},
    ]
    assert count_in_segments(segments)["n_phrases"] == 0
    assert reflective_ratio([segments]) == 0.0


def test_queries_answers_and_hallucinated_tool_output_are_masked():
    text = ('<tool_call>{"name": "search", "arguments": {"query_list": ["wait times"]}}</tool_call>'
            "<tool_response>hmm, let me check</tool_response><answer>wait</answer> <tool_call>wait (cut off")
    assert count_in_segments([{"role": "assistant", "text": text}])["n_phrases"] == 0


def test_match_offsets_point_into_the_segment():
    text = "<answer>wait</answer> Actually, wait."
    c = count_in_segments([{"role": "assistant", "text": text}])
    assert c["phrases"] == {"actually": 1, "wait": 1}
    from searchr1.reflection.detect import matches_in_segments
    for m in matches_in_segments([{"role": "assistant", "text": text}]):
        assert text[m.start:m.end] == m.text


def test_reflective_ratio():
    rollouts = [
        [{"role": "assistant", "text": "Wait, no."}],
        [{"role": "assistant", "text": "The waiter."}],
        [{"role": "tool", "text": "wait"}, {"role": "assistant", "text": "ok"}],
        [{"role": "assistant", "text": "Let me double-check."}],
    ]
    assert reflective_ratio(rollouts) == 0.5
    assert math.isnan(reflective_ratio([]))


def test_bad_segment_is_named():
    with pytest.raises(ValueError, match="segment 1"):
        count_in_segments([{"role": "assistant", "text": "x"}, {"text": "no role"}])


def test_lexicon_file(tmp_path):
    f = tmp_path / "lex.txt"
    f.write_text("# mine\n[mine]\nby jove\n")
    lex = load_lexicon(f)
    assert phrases("By  Jove, wait!", lex) == ["by jove"]
    assert lex.digest() != default_lexicon().digest()


@pytest.mark.parametrize("content, message", [
    ("", "no phrases"),
    ("[broken\nwait\n", ":1: expected a category header"),
    ("wait\nhmm\nWait\n", ":3: phrase 'wait' already listed on line 1"),
    ("...\n", ":1: a phrase needs"),
])
def test_bad_lexicon_file_names_the_line(tmp_path, content, message):
    f = tmp_path / "lex.txt"
    f.write_text(content)
    with pytest.raises(LexiconError, match=message):
        load_lexicon(f)
    with pytest.raises(LexiconError, match="not found"):
        load_lexicon(tmp_path / "missing.txt")


def test_offsets_survive_characters_that_change_length_when_lower_cased():
    text = "İstanbul? Wait, no."  # 'İ'.lower() is two characters
    (m,) = find_phrases(text)
    assert (m.phrase, text[m.start:m.end]) == ("wait", "Wait")


def test_phrases_that_start_or_end_with_punctuation():
    lex = parse_lexicon("[p]\n...wait\nhmm...\nwait\n")
    assert phrases("so...wait, hmm... ok", lex) == ["...wait", "hmm..."]
    assert phrases("hmm...x", lex) == ["hmm..."]  # no word boundary needed after punctuation
