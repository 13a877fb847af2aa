"""Word error rate on normalised text (crossmodald eval transcript)."""

from __future__ import annotations

import pytest

from crossmodald.service.wer import WordErrors, normalise, number_words, wer, word_errors


@pytest.mark.parametrize(
    ("n", "words"),
    [
        (0, "zero"),
        (9, "nine"),
        (21, "twenty one"),
        (105, "one hundred five"),
        (1961, "one thousand nine hundred sixty one"),
        (2_000_005, "two million five"),
    ],
)
def test_number_words(n: int, words: str) -> None:
    assert number_words(n) == words


def test_normalise_case_punctuation_and_numbers() -> None:
    assert normalise("We meet at 9 o'clock, on the 21st!") == [
        "we", "meet", "at", "nine", "o'clock", "on", "the", "twenty", "first",
    ]  # fmt: skip
    assert normalise("Ask NOT... what-your country") == ["ask", "not", "what", "your", "country"]
    assert normalise("3.5% of 1,000") == [
        "three", "point", "five", "percent", "of", "one", "thousand",
    ]  # fmt: skip
    assert normalise("'quoted' words") == ["quoted", "words"]


def test_word_errors_count_each_kind() -> None:
    ref = ["the", "cat", "sat", "on", "the", "mat"]
    assert word_errors(ref, ref) == WordErrors(0, 0, 0, 6)
    assert word_errors(ref, ["the", "cat", "sat", "on", "mat"]) == WordErrors(0, 1, 0, 6)
    assert word_errors(ref, ["the", "cat", "sat", "on", "the", "the", "mat"]) == WordErrors(
        0, 0, 1, 6
    )
    assert word_errors(ref, ["the", "dog", "sat", "on", "the", "mat"]) == WordErrors(1, 0, 0, 6)
    assert word_errors([], []).wer == 0.0
    assert word_errors([], ["extra"]).wer == 1.0


def test_wer_ignores_style_but_not_words() -> None:
    assert wer("Nine o'clock.", "9 O'CLOCK").wer == 0.0
    assert wer("ask not what your country", "ask what your country").wer == pytest.approx(0.2)
    total = wer("a b", "a c") + wer("d e f", "d e f")
    assert total.errors == 1
    assert total.wer == pytest.approx(0.2)
