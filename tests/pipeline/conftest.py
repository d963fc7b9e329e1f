"""Shared, session-scoped corpora for the pipeline tests (built once from real text, read many times)."""

from __future__ import annotations

import os

import pytest

from .fixtures import build_warc, build_wiki_dump


@pytest.fixture(scope="session")
def pydoc_warc(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A gzipped WARC of pydoc pages of six standard-library modules."""
    return build_warc(str(tmp_path_factory.mktemp("web") / "pages.warc.gz"))


@pytest.fixture(scope="session")
def wiki_dump(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A multistream .xml.bz2 dump: the sample pages three times over, two pages per bz2 stream."""
    return build_wiki_dump(str(tmp_path_factory.mktemp("wiki") / "test-pages-articles.xml.bz2"), copies=3,
                           pages_per_stream=2)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    """test_run.py's JSONL corpus (two sources, six parts), shared by test_run.py and test_ray.py."""
    from .test_run import build_corpus

    return build_corpus(tmp_path_factory)


@pytest.fixture(scope="session")
def reference(corpus, tmp_path_factory: pytest.TempPathFactory):
    """The local executor's run over ``corpus``: the bytes every other executor and run must reproduce."""
    from .test_run import reference_run

    return reference_run(corpus, tmp_path_factory)


@pytest.fixture()
def in_other_dir(tmp_path, monkeypatch) -> str:
    """Run the test from an unrelated working directory (presets must not depend on it)."""
    monkeypatch.chdir(tmp_path)
    return os.getcwd()
