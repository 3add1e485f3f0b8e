import pytest

from searchr1.rewards import answer_contained, exact_match, extract_answer, f1_score, normalize_answer

# (prediction, golden answers, expected EM) — Search-R1 / FlashRAG normalisation.
EM_CASES = [
    ("Paris", ["Paris"], 1.0),
    ("paris", ["Paris"], 1.0),                        # case
    ("The Beatles", ["Beatles"], 1.0),                # leading article
    ("beatles", ["The Beatles"], 1.0),
    ("A Tale of Two Cities", ["tale of two cities"], 1.0),
    ("an apple", ["apple"], 1.0),
    ("Theatre", ["atre"], 0.0),                       # articles only as whole words
    ("U.S.A.", ["USA"], 1.0),                         # punctuation
    ("Washington, D.C.", ["washington dc"], 1.0),
    ("rock-and-roll", ["rockandroll"], 1.0),          # hyphen is punctuation: removed, not a space
    ("  New   York  ", ["new york"], 1.0),            # whitespace
    ("New York City", ["New York"], 0.0),             # EM is not containment
    ("1,000", ["1000"], 1.0),                         # numbers: comma stripped
    ("1000", ["one thousand"], 0.0),                  # no number words
    ("3.14", ["314"], 1.0),
    ("Zürich", ["zürich"], 1.0),                      # unicode letters lowercased, kept
    ("Zurich", ["Zürich"], 0.0),                      # no accent folding
    ("Gödel’s theorem", ["Gödel's theorem"], 0.0),    # curly apostrophe is not ASCII punctuation
    ("Ysolde", ["comet Ysolde", "Ysolde"], 1.0),      # any golden answer
    ("", ["anything"], 0.0),
    ("", [""], 1.0),
    (None, ["x"], 0.0),                               # no answer given
    ("x", [], 0.0),                                   # no golden answers
    ("Paris", "Paris", 1.0),                          # a bare string golden answer
]


@pytest.mark.parametrize(("prediction", "golden", "expected"), EM_CASES)
def test_exact_match_table(prediction, golden, expected):
    assert exact_match(prediction, golden) == expected


def test_normalize_answer():
    assert normalize_answer("  The  Quick, Brown FOX!  ") == "quick brown fox"
    assert normalize_answer("a an the") == ""


def test_f1_and_contains():
    assert f1_score("New York City", ["New York"]) == pytest.approx(0.8)
    assert f1_score("John Lennon", ["Paul McCartney", "Lennon"]) == pytest.approx(2 / 3)
    assert f1_score("yes", ["no"]) == 0.0
    assert f1_score("no", ["no"]) == 1.0
    assert f1_score(None, ["x"]) == 0.0
    assert answer_contained("it is in New York City", ["new york"]) == 1.0
    assert answer_contained("York", ["New York"]) == 0.0
    assert answer_contained("anything", [""]) == 0.0  # an empty golden answer is not "contained" everywhere


def test_extract_answer_takes_the_last_complete_block():
    assert extract_answer("For example, <answer> Beijing </answer>. ... <answer> Paris </answer>") == "Paris"
    assert extract_answer("<answer>\n multi\nline </answer>") == "multi\nline"
    assert extract_answer("no tags") is None
    assert extract_answer("<answer> unclosed") is None
    assert extract_answer("<answer>a</answer><answer>b") == "a"
    assert extract_answer("<answer>a</answer></answer>") == "a"  # as the lazy regex in Search-R1 reads it
    assert extract_answer("<answer></answer>") == ""
