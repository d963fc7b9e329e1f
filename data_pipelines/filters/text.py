"""Word, line and paragraph helpers shared by the quality filters.

Why not nltk: its ``word_tokenize``/``sent_tokenize`` need the ``punkt`` data files, a download at run time,
which this project forbids. The reference filters (Gopher, C4, FineWeb) only need words, lines and
paragraphs, and whitespace splitting with punctuation stripped from the word edges gives the same counts
for prose (it differs from the Penn Treebank tokenizer only in keeping contractions like "don't" whole).
"""

from __future__ import annotations

import re
import string
from itertools import filterfalse, repeat

# ASCII punctuation plus the typographic marks that commonly wrap words in web and book text.
PUNCTUATION = string.punctuation + "“”‘’«»„‚‹›–—…¡¿·•"

PARAGRAPH_SPLIT = re.compile(r"\n{2,}")
# A token made only of non-letters: symbols, digits, underscores. Anchored on whitespace so a long token is
# scanned once (linear time even for a 100 MB line without spaces).
_TOKEN_WITHOUT_LETTER = re.compile(r"(?<!\S)(?:[^\w\s]|[\d_])+(?!\S)")


def words_of(text: str) -> list[str]:
    """Whitespace-separated tokens with edge punctuation removed; pure punctuation tokens are not words."""
    return list(filter(None, map(str.strip, text.split(), repeat(PUNCTUATION))))  # C loops, no Python frame


def count_words_with_letter(words: list[str]) -> int:
    """How many of ``words`` contain at least one alphabetic character (one regex pass, no per-char loop).

    A word that ``str.isalpha`` accepts has one (an alphabetic character is a word character, not a digit or
    "_"), so the regex only runs over the others: in prose, a tenth of the words."""
    others = list(filterfalse(str.isalpha, words))
    return len(words) - len(_TOKEN_WITHOUT_LETTER.findall(" ".join(others)))


def non_empty_lines(text: str) -> list[str]:
    """Lines with content. Blank lines are layout (paragraph breaks), not lines of text, for every ratio here."""
    return [line for line in text.split("\n") if line and not line.isspace()]


def find_duplicates(items: list[str]) -> tuple[int, int]:
    """Number of items that repeat an earlier one, and the characters in those repeats (Gopher's definition)."""
    seen: set[str] = set()
    dup_items = dup_chars = 0
    for item in items:
        if item in seen:
            dup_items += 1
            dup_chars += len(item)
        else:
            seen.add(item)
    return dup_items, dup_chars
