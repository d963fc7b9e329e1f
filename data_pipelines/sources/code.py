"""Source code: repository checkouts (a directory is one repository) and The-Stack-style JSONL files.

A checkout is walked in sorted order (deterministic on every file system); VCS, vendored, build and cache
directories are pruned (each counted once as ``excluded_dir``), binary files (known binary extensions, or
a NUL byte in the first 8 KiB as git decides) and minified/lock files are skipped and counted. Each file
records its language (from its name), the repository's licence (SPDX id from its LICENSE/COPYING file)
and its path inside the repository.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar, Iterator

from data_pipelines.document import Document
from data_pipelines.sources.base import (
    STREAM_ERRORS,
    SourceReader,
    compression_of,
    decode_utf8,
    file_label,
    read_text_file,
    stream_error_reason,
)
from data_pipelines.sources.languages import BINARY_EXTENSIONS, language_of
from data_pipelines.sources.licenses import LICENSE_FILE_NAMES, repo_license
from data_pipelines.stats import StageStats

log = logging.getLogger(__name__)

DEFAULT_EXCLUDE_DIRS = (
    ".git", ".hg", ".svn", ".bzr", "node_modules", "bower_components", "vendor", "third_party", "thirdparty",
    "3rdparty", "external", "dist", "build", "target", "out", "__pycache__", ".tox", ".nox", ".venv", "venv",
    "env", "site-packages", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".idea", ".vscode", ".eggs",
    ".gradle", "Pods", "generated", "_build", ".next", ".cache",
)
LOCK_FILES = frozenset({
    "package-lock.json", "yarn.lock", "pnpm-lock.yaml", "Cargo.lock", "poetry.lock", "Pipfile.lock",
    "composer.lock", "Gemfile.lock", "go.sum", "uv.lock",
})
STACK_SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.bz2", ".jsonl.xz", ".json.gz", ".ndjson")


def is_minified(name: str, text: str, max_mean_line: int) -> bool:
    """``*.min.js``/``*.min.css``, or JS/CSS whose mean line is longer than ``max_mean_line``."""
    lower = name.lower()
    if ".min." in lower:
        return True
    if lower.endswith((".js", ".css", ".mjs")):
        lines = text.count("\n") + 1
        return len(text) / lines > max_mean_line
    return False


class CodeReader(SourceReader):
    """``kind: code``. A path is a repository directory, a single source file, or a Stack-style JSONL file.

    Options: ``exclude_dirs``, ``languages`` (keep only these; default every recognised language),
    ``minified_mean_line`` (JS/CSS above this mean line length count as minified), and for JSONL the field
    names ``content_field``, ``path_fields``, ``language_fields``, ``license_fields``, ``repo_fields``,
    ``id_fields`` (first present wins). ``max_record_bytes`` defaults to 1 MiB per file, as in The Stack.
    """

    kind: ClassVar[str] = "code"
    directory_units: ClassVar[bool] = True
    OPTIONS: ClassVar[dict[str, Any]] = {
        "max_record_bytes": 1 << 20,
        "exclude_dirs": list(DEFAULT_EXCLUDE_DIRS),
        "languages": None,
        "minified_mean_line": 300,
        "content_field": "content",
        "path_fields": ["max_stars_repo_path", "path", "filepath"],
        "language_fields": ["lang", "language"],
        "license_fields": ["license", "max_stars_repo_licenses", "licenses"],
        "repo_fields": ["max_stars_repo_name", "repo_name", "repository_name", "repo"],
        "id_fields": ["id", "hexsha"],
    }

    def __init__(self, source: str, **options: Any):
        super().__init__(source, **options)
        self.exclude_dirs = frozenset(self.options["exclude_dirs"])
        langs = self.options["languages"]
        self.languages = frozenset(langs) if langs else None

    def read(self, path: str, stats: StageStats) -> Iterator[Document]:
        if os.path.isdir(path):
            yield from self._read_repo(path, stats)
        elif path.lower().endswith(STACK_SUFFIXES):
            yield from self._read_stack(path, stats)
        else:
            repo_dir = os.path.dirname(os.path.abspath(path))
            doc = self._read_file(path, repo_dir, os.path.basename(repo_dir), repo_license(repo_dir), stats)
            if doc is not None:
                yield doc

    # -- repository checkouts ------------------------------------------------------------------------
    def _read_repo(self, repo_dir: str, stats: StageStats) -> Iterator[Document]:
        repo_dir = os.path.abspath(repo_dir)
        repo = os.path.basename(repo_dir.rstrip(os.sep))
        license_id = repo_license(repo_dir)
        for dirpath, dirnames, filenames in os.walk(repo_dir, followlinks=False):
            kept_dirs = []
            for d in sorted(dirnames):
                if d in self.exclude_dirs or d.endswith(".egg-info"):
                    self.skip(stats, "excluded_dir", where=os.path.join(dirpath, d))
                else:
                    kept_dirs.append(d)
            dirnames[:] = kept_dirs  # prune in place, sorted: deterministic walk order
            for name in sorted(filenames):
                if dirpath == repo_dir and name in LICENSE_FILE_NAMES:
                    continue  # the licence is recorded as metadata, not a document
                doc = self._read_file(os.path.join(dirpath, name), repo_dir, repo, license_id, stats)
                if doc is not None:
                    yield doc

    def _read_file(self, path: str, repo_dir: str, repo: str, license_id: str, stats: StageStats) -> Document | None:
        name = os.path.basename(path)
        rel = os.path.relpath(path, repo_dir).replace(os.sep, "/")
        if os.path.islink(path) or not os.path.isfile(path):
            self.skip(stats, "not_regular_file", where=path)
            return None
        size = os.path.getsize(path)
        if os.path.splitext(name)[1].lower() in BINARY_EXTENSIONS:
            self.skip(stats, "binary", size, path)
            return None
        language = language_of(name)
        if language is None:
            self.skip(stats, "unknown_language", size, path)
            return None
        if self.languages is not None and language not in self.languages:
            self.drop(stats, "language_not_selected", size)
            return None
        if name in LOCK_FILES:
            self.skip(stats, "generated", size, path)
            return None
        if size > self.max_record_bytes:
            self.skip(stats, "record_too_large", size, path)
            return None
        try:
            data, size, _ = read_text_file(path, self.max_record_bytes)
        except STREAM_ERRORS as exc:
            self.skip(stats, stream_error_reason(exc, compression_of(path), "file"), size, path)
            return None
        if data is None:
            self.skip(stats, "record_too_large", size, path)
            return None
        if b"\x00" in data[:8192]:
            self.skip(stats, "binary", size, path)
            return None
        text = decode_utf8(data, stats, self.invalid_utf8)
        if text is None:
            self.skip(stats, "invalid_utf8", size, path)
            return None
        if is_minified(name, text, int(self.options["minified_mean_line"])):
            self.skip(stats, "minified", size, path)
            return None
        meta = {"file": file_label(path), "repo": repo, "path": rel, "language": language, "license": license_id}
        return self.emit(stats, f"{self.source}:{repo}/{rel}", text, size, meta)

    # -- The-Stack-style JSONL ----------------------------------------------------------------------
    @staticmethod
    def _first(record: dict[str, Any], fields: list[str]) -> Any:
        for f in fields:
            value = record.get(f)
            if value not in (None, "", []):
                return value
        return None

    def _read_stack(self, path: str, stats: StageStats) -> Iterator[Document]:
        for record, fname, lineno, nbytes in self.iter_json_lines(path, stats):
            doc = self._stack_record(record, fname, lineno, nbytes, stats)
            if doc is not None:
                yield doc

    def _stack_record(self, record: Any, fname: str, lineno: int, nbytes: int, stats: StageStats) -> Document | None:
        content = record.get(self.options["content_field"]) if isinstance(record, dict) else None
        if not isinstance(content, str):
            self.skip(stats, "missing_text_field", nbytes, f"{fname}:{lineno}")
            return None
        if len(content) > self.max_record_bytes:
            self.skip(stats, "record_too_large", nbytes, f"{fname}:{lineno}")
            return None
        rel = str(self._first(record, self.options["path_fields"]) or "")
        language = self._first(record, self.options["language_fields"]) or (language_of(rel) if rel else None)
        if self.languages is not None and language not in self.languages:
            self.drop(stats, "language_not_selected", nbytes)
            return None
        license_value = self._first(record, self.options["license_fields"])
        if isinstance(license_value, list):
            license_value = " OR ".join(str(v) for v in license_value)
        repo = str(self._first(record, self.options["repo_fields"]) or "")
        rec_id = self._first(record, self.options["id_fields"])
        doc_id = str(rec_id) if rec_id is not None else f"{self.source}:{os.path.basename(fname)}:{lineno}"
        meta = {
            "file": fname, "repo": repo, "path": rel, "language": str(language or ""),
            "license": str(license_value or "NOASSERTION"), "line": lineno,
        }
        return self.emit(stats, doc_id, content, nbytes, meta)
