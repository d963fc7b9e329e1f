"""Ground truth for dedup quality: real text, planted near-duplicates, brute-force Jaccard, pair metrics.

Used by the quality tests and by the benchmark, so both measure the same thing.

* :func:`stdlib_docstrings` / :func:`stdlib_code_blocks` -- real English text and real code that every
  Python installation carries: the standard library's docstrings and its top-level functions and classes
  (read with ``ast``, nothing is imported).
* :func:`planted_corpus` -- base documents plus edited copies whose Jaccard similarity to their original
  is steered into a chosen range by word substitutions, deletions, insertions and span moves
  (reorderings), measured after every edit with the exact shingle sets.
* :func:`brute_force_jaccard` -- exact Jaccard of every pair that shares a shingle (an inverted index of
  plain Python sets of n-gram strings, independent of the hashing code under test).
* :func:`pair_metrics` -- precision and recall of predicted duplicate pairs with a don't-care band around
  the threshold (see its docstring for why).
"""

from __future__ import annotations

import ast
import os
import random
import re
import sysconfig
from dataclasses import dataclass, field
from itertools import combinations
from typing import Iterable, Sequence

from data_pipelines.dedup.config import MinHashParams
from data_pipelines.dedup.minhash import normalize

_TOKEN_RE = re.compile(r"\w+")


def stdlib_docstrings(min_words: int = 30, limit: int | None = None) -> list[str]:
    """Docstrings with at least ``min_words`` words from the stdlib's ``.py`` files, in sorted file order."""
    out: list[str] = []
    seen: set[str] = set()
    for source in _stdlib_sources():
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc.split()) >= min_words and doc not in seen:
                    seen.add(doc)
                    out.append(doc)
                    if limit is not None and len(out) >= limit:
                        return out
    return out


def _stdlib_sources():
    root = sysconfig.get_paths()["stdlib"]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in {"test", "tests", "site-packages", "idlelib", "__pycache__"})
        for name in sorted(filenames):
            if name.endswith(".py"):
                try:
                    with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                        yield f.read()
                except (OSError, UnicodeDecodeError):
                    continue


def stdlib_code_blocks(min_lines: int = 20, max_lines: int = 120, limit: int | None = None) -> list[str]:
    """Source of top-level functions and classes of ``min_lines`` to ``max_lines`` lines from the stdlib."""
    out: list[str] = []
    for source in _stdlib_sources():
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        lines = source.splitlines(keepends=True)
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno:
                if min_lines <= node.end_lineno - node.lineno + 1 <= max_lines:
                    out.append("".join(lines[node.lineno - 1 : node.end_lineno]))
                    if limit is not None and len(out) >= limit:
                        return out
    return out


def shingle_set(text: str, params: MinHashParams) -> set[str]:
    """The exact shingles of ``text`` as strings (same normalisation and units as the MinHash code)."""
    norm = normalize(text, params.lowercase)
    if params.shingle == "char":
        units: list[str] = list(norm)
    elif params.shingle == "token":
        units = _TOKEN_RE.findall(norm)
    else:
        units = norm.split(" ") if norm else []
    n = params.ngram
    if not units:
        return set()
    if len(units) < n:
        return {"\x00".join(units)}
    return {"\x00".join(units[i : i + n]) for i in range(len(units) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 0.0
    return len(a & b) / len(a | b)


def brute_force_jaccard(texts: Sequence[str], params: MinHashParams, min_jaccard: float = 0.0) -> dict[tuple[int, int], float]:
    """``{(i, j): J}`` (``i < j``) for every pair with ``J >= min_jaccard`` and at least one shared shingle."""
    sets = [shingle_set(t, params) for t in texts]
    index: dict[str, list[int]] = {}
    for i, s in enumerate(sets):
        for sh in s:
            index.setdefault(sh, []).append(i)
    shared: dict[tuple[int, int], int] = {}
    for docs in index.values():
        if len(docs) > 1:
            for pair in combinations(docs, 2):
                shared[pair] = shared.get(pair, 0) + 1
    out = {}
    for (i, j), c in shared.items():
        jac = c / (len(sets[i]) + len(sets[j]) - c)
        if jac >= min_jaccard:
            out[(i, j)] = jac
    return out


@dataclass
class PlantedCorpus:
    texts: list[str]
    planted: list[tuple[int, int, float]] = field(default_factory=list)  # (original, copy, Jaccard)


def _edit(words: list[str], vocab: Sequence[str], rng: random.Random) -> None:
    op = rng.random()
    pos = rng.randrange(len(words))
    if op < 0.35:
        words[pos] = rng.choice(vocab)
    elif op < 0.6 and len(words) > 10:
        del words[pos]
    elif op < 0.85:
        words.insert(pos, rng.choice(vocab))
    else:  # move a span elsewhere (reordering)
        length = rng.randint(3, max(3, min(30, len(words) // 4)))
        start = rng.randrange(max(1, len(words) - length))
        span = words[start : start + length]
        del words[start : start + length]
        dest = rng.randrange(len(words) + 1)
        words[dest:dest] = span


def near_copy(text: str, target: tuple[float, float], params: MinHashParams, vocab: Sequence[str], rng: random.Random) -> tuple[str, float] | None:
    """An edited copy of ``text`` whose Jaccard to ``text`` lies in ``target``, or None if edits overshoot."""
    base = shingle_set(text, params)
    words = text.split()
    goal = rng.uniform(*target)
    for _ in range(10 * len(words) + 100):
        _edit(words, vocab, rng)
        copy = " ".join(words)
        jac = jaccard(base, shingle_set(copy, params))
        if jac <= goal:
            return (copy, jac) if target[0] <= jac <= target[1] else None
    return None


def planted_corpus(
    base_texts: Sequence[str],
    params: MinHashParams,
    positives: int,
    negatives: int,
    positive_range: tuple[float, float],
    negative_range: tuple[float, float],
    seed: int = 0,
) -> PlantedCorpus:
    """``base_texts`` plus ``positives`` copies at Jaccard in ``positive_range`` of distinct originals and
    ``negatives`` copies in ``negative_range``, shuffled deterministically."""
    rng = random.Random(seed)
    vocab = sorted({w for t in base_texts for w in t.split()})
    order = list(range(len(base_texts)))
    rng.shuffle(order)
    texts = list(base_texts)
    planted: list[tuple[int, int, float]] = []
    wanted = [positive_range] * positives + [negative_range] * negatives
    it = iter(order)
    for target in wanted:
        for src in it:
            made = near_copy(base_texts[src], target, params, vocab, rng)
            if made is not None:
                planted.append((src, len(texts), made[1]))
                texts.append(made[0])
                break
        else:
            raise ValueError(f"not enough base texts to plant {positives + negatives} copies")
    perm = list(range(len(texts)))
    rng.shuffle(perm)
    where = {old: new for new, old in enumerate(perm)}
    return PlantedCorpus([texts[i] for i in perm], [(where[a], where[b], j) for a, b, j in planted])


def cluster_pairs(labels: Sequence[int]) -> set[tuple[int, int]]:
    """All ``(i, j)``, ``i < j``, with equal labels (the pairs a clustering declares duplicates)."""
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(i)
    return {pair for members in groups.values() if len(members) > 1 for pair in combinations(members, 2)}


def pair_metrics(
    predicted: Iterable[tuple[int, int]],
    jaccards: dict[tuple[int, int], float],
    threshold: float,
    below: float = 0.15,
    above: float = 0.1,
) -> dict[str, float]:
    """Precision/recall of ``predicted`` pairs against brute-force Jaccard with a don't-care band.

    An LSH S-curve cannot be a step at ``threshold``: pairs a hair above or below it are found with
    probability ~0.5 whatever the implementation. So pairs with ``threshold - below < J < threshold +
    above`` count for neither metric (their number is returned as ``ignored``): positives are pairs with
    ``J >= threshold + above``, negatives all pairs with ``J <= threshold - below`` (including every pair
    that shares no shingle). ``recall = |predicted & positives| / |positives|``; ``precision =
    |predicted & positives| / |predicted & (positives | negatives)|``.
    """
    pos = {p for p, j in jaccards.items() if j >= threshold + above}
    gray = {p for p, j in jaccards.items() if threshold - below < j < threshold + above}
    pred = {(min(a, b), max(a, b)) for a, b in predicted}
    tp = len(pred & pos)
    judged = len(pred - gray)
    return {
        "precision": tp / judged if judged else 1.0,
        "recall": tp / len(pos) if pos else 1.0,
        "true_positives": tp,
        "false_positives": judged - tp,
        "false_negatives": len(pos) - tp,
        "ignored": len(gray),
        "positives": len(pos),
    }
