"""DPR's has_answer and top-k accuracy."""
import unicodedata

import pytest

from dpr_paddle.retrieval.evaluation import format_top_k_table, has_answer, tokenize_words, top_k_accuracy


@pytest.mark.parametrize("answers,text,expected", [
    (["July 5 , 2018"], "The film came out on July 5, 2018 in Japan.", True),  # NQ's tokenised answers
    (["july 5, 2018"], "The film came out on JULY 5 , 2018.", True),  # uncased
    (["Peter Davison"], "Peter Davisons appeared.", False),  # token, not substring
    (["cat"], "concatenate the strings", False),
    (["Colin Baker and Sylvester McCoy"], "with Colin Baker and Sylvester McCoy in 1999", True),  # multi-token
    (["Colin Baker and McCoy"], "with Colin Baker and Sylvester McCoy", False),  # not contiguous
    (["U.S."], "the U.S. government", True),  # punctuation tokens
    (["US"], "the U.S. government", False),
    (["$12"], "nearly $12 globally", True),
    (["12"], "nearly $12 globally", True),
    (["café"], "a small cafe\u0301 in Paris", True),  # NFC answer vs NFD text
    (["cafe"], "a small café in Paris", False),  # accents are kept (DPR does not strip them)
    (["Ünïcödé"], "ünïcödé àccents", True),
    (["", "   "], "anything at all", False),  # empty answers never match (DPR would say True)
    (["Newton", "Leibniz"], "Gottfried Leibniz wrote", True),  # any answer
    ([], "text", False),
])
def test_has_answer_string(answers, text, expected):
    assert has_answer(answers, text) is expected


@pytest.mark.parametrize("pattern,text,expected", [
    (r"\d{4}", "built in 1889", True),
    (r"Eiffel\s+Tower", "the eiffel   tower", True),  # case-insensitive
    (r"^Paris$", "Paris, France", False),
    (r"(unclosed", "(unclosed paren", False),  # invalid regex = no match
    (r"Mc?Coy", "Sylvester McCoy", True),
])
def test_has_answer_regex(pattern, text, expected):
    assert has_answer([pattern], text, match="regex") is expected


def test_simple_tokenizer_matches_dpr_regex():
    # ALPHA_NUM runs (letters, digits, marks) or one non-space character.
    assert tokenize_words("Hello, World! 3.14") == ["hello", ",", "world", "!", "3", ".", "14"]
    assert tokenize_words(unicodedata.normalize("NFD", "é")) == [unicodedata.normalize("NFD", "é")]


def test_bad_match_type():
    with pytest.raises(ValueError, match="match"):
        has_answer(["x"], "x", match="fuzzy")


def test_top_k_accuracy_counts():
    hits = [[False, True, False], [True, False, False], [False, False, False], [False, False, True]]
    acc = top_k_accuracy(hits, ks=(1, 2, 3, 5))
    assert acc == {1: 0.25, 2: 0.5, 3: 0.75, 5: 0.75}
    table = format_top_k_table({"x": acc}, ks=(1, 2))
    assert "| x | 0.250 | 0.500 |" in table
    with pytest.raises(ValueError):
        top_k_accuracy([])
