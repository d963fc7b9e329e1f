"""docs/extending.md shows the examples' code: every Python block there starts with ``# <file>`` and each of its
chunks (between ``...`` lines) must appear verbatim in that file, so the doc cannot drift from the tested code."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "extending.md"


def _blocks() -> list[tuple[str, list[str]]]:
    out = []
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S):
        first, *lines = block.splitlines()
        assert first.startswith("# tests/extending/"), f"a Python block of {DOC} must name its file: {first!r}"
        chunks, cur = [], []
        for line in lines:
            if line.strip() == "...":
                chunks.append(cur)
                cur = []
            else:
                cur.append(line)
        out.append((first[2:], [c for c in [*chunks, cur] if c]))
    return out


def test_every_excerpt_is_in_its_file():
    blocks = _blocks()
    assert {f for f, _ in blocks} == {"tests/extending/bow/family.py", "tests/extending/bow/model.py",
                                      "tests/extending/url_ratio_filter.py", "tests/extending/stats_stage.py",
                                      "tests/extending/csv_source.py", "tests/extending/stop_at_loss.py"}
    for name, chunks in blocks:
        text = (REPO / name).read_text()
        for chunk in chunks:
            assert "\n".join(chunk) + "\n" in text, f"docs/extending.md shows lines that {name} does not have:\n" + \
                "\n".join(chunk)


def test_every_named_test_exists():
    for name in set(re.findall(r"test_\w+_example\.py", DOC.read_text())):
        assert (REPO / "tests" / "extending" / name).is_file(), name
