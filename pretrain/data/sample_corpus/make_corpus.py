"""Regenerate the bundled sample corpus from a CPython standard library (run once, output committed).

    python pretrain/data/sample_corpus/make_corpus.py [--stdlib DIR] [--out DIR]

Two corpora, one JSON object per line (``{"id": ..., "text": ...}``), gzip-compressed with a zero
timestamp so the same input gives byte-identical files:

* ``prose.jsonl.gz``: English prose. One document per module holding its module, class and function
  docstrings (read with :mod:`ast`, never imported), plus the language-reference topics that CPython ships
  in ``pydoc_data/topics.py``.
* ``code.jsonl.gz``: Python source files of the standard library, a deterministic subset chosen by a hash
  of the relative path until the size budget is met.

Test suites, vendored ``site-packages`` and generated tables (``encodings``) are left out. The documents
are shuffled with a fixed seed so that a contiguous train/validation split of them is representative.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import hashlib
import io
import json
import random
import sysconfig
from pathlib import Path

PROSE_BUDGET = 2_000_000  # characters
CODE_BUDGET = 3_200_000
MIN_PROSE_CHARS = 300
CODE_MIN_BYTES, CODE_MAX_BYTES = 1_500, 60_000
SKIP_PARTS = {"test", "tests", "site-packages", "encodings", "__pycache__", "idle_test", "pydoc_data"}
SEED = 20240521


def stdlib_sources(stdlib: Path) -> list[Path]:
    files = []
    for p in sorted(stdlib.rglob("*.py")):
        rel = p.relative_to(stdlib)
        if SKIP_PARTS.intersection(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        files.append(p)
    return files


def docstring_document(tree: ast.Module) -> str:
    """Module docstring, then ``name`` + docstring for every documented class and function, in file order."""
    parts = []
    mod = ast.get_docstring(tree)
    if mod:
        parts.append(mod)

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}{child.name}"
                doc = ast.get_docstring(child)
                if doc and len(doc) >= 40:
                    parts.append(f"{name}\n\n{doc}")
                visit(child, name + ".")

    visit(tree, "")
    return "\n\n".join(parts)


def pydoc_topics(stdlib: Path) -> list[tuple[str, str]]:
    """The reference-manual topics in pydoc_data/topics.py, as (name, text), parsed without importing."""
    src = (stdlib / "pydoc_data" / "topics.py").read_text(encoding="utf-8")
    tree = ast.parse(src)
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            topics = ast.literal_eval(node.value)
            return sorted(topics.items())
    return []


def take_budget(docs: list[dict], budget: int) -> list[dict]:
    """Deterministic subset: order by a hash of the id, keep while the running size fits the budget."""
    out, used = [], 0
    for d in sorted(docs, key=lambda d: hashlib.sha1(d["id"].encode()).hexdigest()):
        if used + len(d["text"]) > budget:
            continue
        out.append(d)
        used += len(d["text"])
    return out


def write_jsonl_gz(path: Path, docs: list[dict]) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        for d in docs:
            gz.write((json.dumps({"id": d["id"], "text": d["text"]}, ensure_ascii=False) + "\n").encode("utf-8"))
    path.write_bytes(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stdlib", type=Path, default=Path(sysconfig.get_paths()["stdlib"]))
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()

    prose, code = [], []
    for path in stdlib_sources(args.stdlib):
        rel = path.relative_to(args.stdlib).as_posix()
        try:
            src = path.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (UnicodeDecodeError, SyntaxError):
            continue
        doc = docstring_document(tree)
        if len(doc) >= MIN_PROSE_CHARS:
            prose.append({"id": f"cpython/Lib/{rel}#docstrings", "text": doc})
        if CODE_MIN_BYTES <= len(src.encode()) <= CODE_MAX_BYTES:
            code.append({"id": f"cpython/Lib/{rel}", "text": src})
    for name, text in pydoc_topics(args.stdlib):
        if len(text) >= MIN_PROSE_CHARS:
            prose.append({"id": f"cpython/Lib/pydoc_data/topics.py#{name}", "text": text.strip()})

    args.out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    for name, docs, budget in (("prose", prose, PROSE_BUDGET), ("code", code, CODE_BUDGET)):
        chosen = sorted(take_budget(docs, budget), key=lambda d: d["id"])
        rng.shuffle(chosen)
        out = args.out / f"{name}.jsonl.gz"
        write_jsonl_gz(out, chosen)
        chars = sum(len(d["text"]) for d in chosen)
        print(f"{out}: {len(chosen)} documents, {chars:,} characters, {out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
