"""Inputs no single one of which may stop the pipeline: unreadable, vanished, empty files and other read errors
(skipped and counted by reason), malformed XML in a wiki dump (resynchronised at the next page, the lost pages
counted), and credentials in URLs and config lines (redacted as secrets)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from data_pipelines.filters.pii import PIIRedactor
from data_pipelines.sources import make_reader
from data_pipelines.stats import StageStats
from tests.pipeline.fixtures import build_wiki_dump, insert_bytes

REPO = Path(__file__).resolve().parents[2]


def _write_jsonl(path: Path, ids: list[str]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "text": f"Document {i} has some words."}) + "\n" for i in ids))
    return path


def _read_files(kind: str, paths: list[Path]) -> tuple[list[str], StageStats]:
    """Every file through one reader, as the read stage does: one stats object for all of them."""
    reader = make_reader(kind, {"kind": kind, "paths": [str(p) for p in paths]})
    stats = StageStats()
    ids = [d.id for p in paths for d in reader.read(str(p), stats)]
    assert stats.docs_in == stats.docs_out + sum(stats.dropped.values()) + sum(stats.skipped.values())
    return ids, stats


# ------------------------------------------------------------------------------------------ per-file errors

SNIPPET = """
import json, sys
from data_pipelines.sources import make_reader
from data_pipelines.stats import StageStats
paths = sys.argv[1:]
reader = make_reader("docs", {"kind": "jsonl", "paths": paths})
stats = StageStats()
ids = [d.id for p in paths for d in reader.read(p, stats)]
print(json.dumps({"ids": ids, "skipped": dict(stats.skipped)}))
"""


def _unreadable_command() -> list[str] | None:
    """How to run a process that file permissions apply to: as is for a normal user; as root, through
    ``setpriv`` without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (root reads any file otherwise)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def test_an_unreadable_file_is_skipped_and_the_others_are_read(tmp_path):
    prefix = _unreadable_command()
    if prefix is None:
        pytest.skip("running as root without setpriv: no way to make a file unreadable to this process")
    first = _write_jsonl(tmp_path / "a.jsonl", ["a1", "a2"])
    locked = _write_jsonl(tmp_path / "b.jsonl", ["b1"])
    last = _write_jsonl(tmp_path / "c.jsonl", ["c1"])
    locked.chmod(0)
    try:
        out = subprocess.run([*prefix, sys.executable, "-c", SNIPPET, str(first), str(locked), str(last)],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        locked.chmod(0o644)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.splitlines()[-1])
    assert result == {"ids": ["a1", "a2", "c1"], "skipped": {"unreadable_file": 1}}, out.stderr


def test_a_vanished_file_a_folder_and_an_io_error_are_skipped_by_reason(tmp_path, monkeypatch):
    good = _write_jsonl(tmp_path / "good.jsonl", ["g1"])
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    gone = tmp_path / "gone.jsonl"  # listed, then deleted before the reader got to it
    ids, stats = _read_files("jsonl", [gone, folder, good])
    assert ids == ["g1"] and stats.skipped == {"missing_file": 1, "not_a_file": 1}

    from data_pipelines.sources import base

    real = base.open_binary

    def failing_disk(path, span=None):
        if path.endswith("bad.jsonl"):
            raise OSError(errno.EIO, "Input/output error", path)
        return real(path, span)

    monkeypatch.setattr(base, "open_binary", failing_disk)
    bad = _write_jsonl(tmp_path / "bad.jsonl", ["x"])
    ids, stats = _read_files("jsonl", [bad, good])
    assert ids == ["g1"] and stats.skipped == {"io_error": 1}


def test_an_error_halfway_through_a_file_keeps_what_was_read(tmp_path, monkeypatch):
    """An OSError the reader's own handling does not catch ends that file only, counted once."""
    path = _write_jsonl(tmp_path / "half.jsonl", [f"h{i}" for i in range(4)])
    calls = {"n": 0}
    reader = make_reader("jsonl", {"kind": "jsonl", "paths": [str(path)]})
    iter_lines = type(reader).iter_json_lines

    def flaky(self, p, stats, span=None):
        for item in iter_lines(self, p, stats, span):
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.EIO, "Input/output error")
            yield item

    monkeypatch.setattr(type(reader), "iter_json_lines", flaky)
    stats = StageStats()
    ids = [d.id for d in reader.read(str(path), stats)]
    assert ids == ["h0", "h1"] and stats.skipped == {"io_error": 1}


@pytest.mark.parametrize("kind, name", [("jsonl", "e.jsonl"), ("books", "e.txt"), ("wiki", "e.xml"),
                                        ("web", "e.warc")])
def test_an_empty_file_is_counted_under_a_reason(tmp_path, kind, name):
    empty = tmp_path / name
    empty.write_bytes(b"")
    ids, stats = _read_files(kind, [empty])
    assert ids == [] and stats.skipped == {"empty_file": 1} and stats.docs_in == 1


# ----------------------------------------------------------------------------------------------- wiki XML


def _titles(path: str) -> tuple[list[str], StageStats]:
    reader = make_reader("wiki", {"kind": "wiki", "paths": [path]})
    stats = StageStats()
    docs = list(reader.read(path, stats))
    assert stats.docs_in == stats.docs_out + sum(stats.dropped.values()) + sum(stats.skipped.values())
    return [d.metadata["title"] for d in docs], stats


@pytest.fixture
def intact(tmp_path) -> tuple[list[str], StageStats]:
    return _titles(build_wiki_dump(str(tmp_path / "intact.xml"), copies=3))


def test_a_malformed_page_costs_that_page_only(tmp_path, intact):
    titles, full = intact
    path = build_wiki_dump(str(tmp_path / "broken.xml"), copies=3)
    insert_bytes(path, b"  <page>", b"  <page><title>Broken & unescaped</tite>\n", occurrence=7)
    got, stats = _titles(path)
    assert got == titles  # every valid page, the ones after the damage included
    assert stats.skipped == {"malformed_xml": 1}  # the lost page, counted
    assert stats.dropped == full.dropped and stats.docs_in == full.docs_in + 1


def test_several_malformed_pages_are_each_counted(tmp_path, intact):
    titles, _ = intact
    path = build_wiki_dump(str(tmp_path / "two.xml"), copies=3)
    insert_bytes(path, b"  <page>", b"  <page><title>a</b></page>\n", occurrence=1)  # before any good page
    insert_bytes(path, b"  <page>", b"  <page><title>a &bogus; b</title></page>\n", occurrence=9)
    insert_bytes(path, b"  <page>", b"  <page><title>never closed\n", occurrence=14)
    got, stats = _titles(path)
    assert got == titles and stats.skipped == {"malformed_xml": 3}


def test_junk_between_pages_or_in_the_siteinfo_loses_no_page(tmp_path, intact):
    titles, _ = intact
    for marker, junk in ((b"  <page>", b"<<junk>>\n"), (b"<dbname>", b"<oops>")):
        path = build_wiki_dump(str(tmp_path / "junk.xml"), copies=3)
        insert_bytes(path, marker, junk, occurrence=3 if marker == b"  <page>" else 1)
        got, stats = _titles(path)
        assert got == titles and stats.skipped == {"malformed_xml": 1}, junk


def test_a_malformed_page_in_a_cut_multistream_bz2_dump(tmp_path, intact):
    import bz2

    titles, _ = intact
    path = build_wiki_dump(str(tmp_path / "b.xml"), copies=3)
    insert_bytes(path, b"  <page>", b"  <page><title>x</tite>\n", occurrence=3)
    head, *pages = Path(path).read_bytes().split(b"  <page>")
    packed = b"".join(bz2.compress(c) for c in [head] + [b"  <page>" + p for p in pages])
    cut = tmp_path / "b.xml.bz2"
    cut.write_bytes(packed[: int(len(packed) * 0.85)])
    got, stats = _titles(str(cut))
    assert 1 <= len(got) < len(titles) and got == titles[: len(got)]
    assert stats.skipped == {"malformed_xml": 1, "truncated_bz2": 1}


def test_an_oversized_page_after_the_damage_is_skipped_with_bounded_memory(tmp_path, intact):
    titles, _ = intact
    path = build_wiki_dump(str(tmp_path / "big.xml"), copies=3)
    insert_bytes(path, b"  <page>", b"  <page><title>x</tite>\n", occurrence=2)
    big = (b"  <page><title>Big</title><ns>0</ns><id>9</id><revision><text>" + b"w " * 600_000
           + b"</text></revision></page>\n")
    insert_bytes(path, b"  <page>", big, occurrence=5)
    reader = make_reader("wiki", {"kind": "wiki", "paths": [path], "options": {"max_record_bytes": 1000}})
    stats = StageStats()
    got = [d.metadata["title"] for d in reader.read(path, stats)]
    assert "Big" not in got and stats.skipped["record_too_large"] >= 1 and stats.skipped["malformed_xml"] == 1


# ------------------------------------------------------------------------------------------ credentials


@pytest.mark.parametrize("text, redacted", [
    ("mysql://root:pa$$w0rd@10.0.0.5", "mysql://root:<SECRET>@10.0.0.5"),
    ("DATABASE_URL=postgresql://app:S3cr3t@db.internal:5432/main",
     "DATABASE_URL=postgresql://app:<SECRET>@db.internal:5432/main"),
    ("git remote add origin https://bot:PW@github.com/org/repo.git",  # looked like an email before
     "git remote add origin https://bot:<SECRET>@github.com/org/repo.git"),
    ("redis://:onlypass99@cache:6379/0", "redis://:<SECRET>@cache:6379/0"),
    ("jdbc:mysql://app:p@ss@word1@10.1.2.3/db", "jdbc:mysql://app:<SECRET>@10.1.2.3/db"),
    ("password=hunter2", "password=<SECRET>"),
    ("PASSWORD: s3cret!", "PASSWORD: <SECRET>"),
    ("db.passwd = letmein42", "db.passwd = <SECRET>"),
    ("pwd: 'abc'", "pwd: '<SECRET>'"),
    ("spring.datasource.password=Tr0ub4dor&3  # prod", "spring.datasource.password=<SECRET>  # prod"),
    ("mysql --password=abc123 -u root", "mysql --password=<SECRET> -u root"),
])
def test_credentials_are_redacted_as_secrets(text, redacted):
    block = PIIRedactor(kinds=["secret", "email", "ip", "phone"])
    out, counts, _ = block.redact(text)
    assert out == redacted and counts.get("secret") == 1
    assert block.redact(out)[0] == out  # redacting twice changes nothing


@pytest.mark.parametrize("text", [
    "mongodb+srv://bob:${MONGO_PW}@cluster0.example.net",  # a reference, not a secret
    "http://localhost:8080/path?q=1",
    "password = None",
    'password = os.environ["DB_PASSWORD"]',
    "pwd = os.getcwd()",
    "password: str",
    "password = request.form",
    "password: ${DB_PASSWORD}",
    "password=changeme",
    "    password:%s",
    "    $ pwd",
])
def test_references_and_code_that_mention_passwords_are_left_alone(text):
    out, counts, _ = PIIRedactor(kinds=["secret"]).redact(text)
    assert out == text and counts == {}


def test_other_pii_keeps_its_placeholders():
    out, counts, _ = PIIRedactor().redact("mail anna@harbour.co.uk or call +44 20 7946 0958 from 93.184.216.34")
    assert out == "mail <EMAIL> or call <PHONE> from <IP_ADDRESS>" and counts == {"email": 1, "phone": 1, "ip": 1}
    # without the secret kind (the default), a URL's user:password@host is left to the other kinds as before
    assert PIIRedactor().redact("mysql://root:pa55@db.example.com")[0] == "mysql://root:<EMAIL>"
