"""Word error rate on normalised text (pure; for ``crossmodald eval transcript``).

Normalisation makes a transcript and its reference comparable whatever their style: lower case,
punctuation dropped (apostrophes inside words kept: "o'clock"), hyphens split words, "%" read
as "percent", and numbers written as words ("9" -> "nine", "1961" -> "one thousand nine hundred
sixty one", "3.5" -> "three point five", "21st" -> "twenty first"), so "9 o'clock" and "nine
o'clock" are the same words.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = ((10**12, "trillion"), (10**9, "billion"), (10**6, "million"), (1000, "thousand"))
_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*(?:st|nd|rd|th)?")


def number_words(n: int) -> str:
    """A non-negative integer in English words, without "and" ("one hundred five")."""
    if n < 0:
        raise ValueError(f"expected a non-negative integer, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            return f"{number_words(high)} {name}" + (f" {number_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def _ordinal(words: str) -> str:
    head, _sep, last = words.rpartition(" ")
    if last in _ORDINALS:
        last = _ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return f"{head} {last}".strip()


def _spell(match: re.Match[str]) -> str:
    token = match.group(0)
    suffix = token[-2:] if token[-2:] in ("st", "nd", "rd", "th") else ""
    digits = token[: -len(suffix)] if suffix else token
    if "." in digits and "," not in digits:
        whole, _dot, frac = digits.partition(".")
        spoken = number_words(int(whole)) + " point " + " ".join(_ONES[int(d)] for d in frac)
        return f" {spoken} "
    spoken = number_words(int(digits.replace(",", "").replace(".", "")))
    return f" {_ordinal(spoken) if suffix else spoken} "


def normalise(text: str) -> list[str]:
    """The words of ``text`` after normalisation (see the module docstring)."""
    text = text.lower().replace("%", " percent ")
    text = _NUMBER.sub(_spell, text)
    text = re.sub(r"[-_/]", " ", text)
    text = re.sub(r"[^\w\s']", " ", text)
    words = [w.strip("'") for w in text.split()]
    return [w for w in words if w]


@dataclass(frozen=True, slots=True)
class WordErrors:
    """Edit counts between a reference and a hypothesis (words)."""

    substitutions: int
    deletions: int
    insertions: int
    reference_words: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self) -> float:
        """Errors per reference word (0 for an empty reference with an empty hypothesis)."""
        if self.reference_words == 0:
            return 0.0 if self.errors == 0 else 1.0
        return self.errors / self.reference_words

    def __add__(self, other: WordErrors) -> WordErrors:
        return WordErrors(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_words + other.reference_words,
        )


def word_errors(reference: Sequence[str], hypothesis: Sequence[str]) -> WordErrors:
    """Levenshtein alignment of two word lists: substitutions, deletions, insertions."""
    n, m = len(reference), len(hypothesis)
    # Each cell: (cost, substitutions, deletions, insertions) of the best alignment so far.
    prev = [(j, 0, 0, j) for j in range(m + 1)]
    for i in range(1, n + 1):
        row = [(i, 0, i, 0)]
        for j in range(1, m + 1):
            same = reference[i - 1] == hypothesis[j - 1]
            d = prev[j - 1]
            diagonal = (d[0] + (0 if same else 1), d[1] + (0 if same else 1), d[2], d[3])
            u = prev[j]
            deletion = (u[0] + 1, u[1], u[2] + 1, u[3])
            left = row[j - 1]
            insertion = (left[0] + 1, left[1], left[2], left[3] + 1)
            row.append(min(diagonal, deletion, insertion))
        prev = row
    _cost, subs, dels, ins = prev[m]
    return WordErrors(subs, dels, ins, n)


def wer(reference: str, hypothesis: str) -> WordErrors:
    """Word errors between two texts after :func:`normalise`."""
    return word_errors(normalise(reference), normalise(hypothesis))
