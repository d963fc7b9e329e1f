"""Source configuration: path expansion, reader construction errors, the Hydra presets, bundled samples."""

from __future__ import annotations

import filecmp
import os
import re
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data_pipelines.samples.make_samples import make_samples
from data_pipelines.sources import (
    READERS,
    SourceConfig,
    expand_paths,
    make_reader,
    package_path,
    source_config,
    source_inputs,
)
from data_pipelines.sources.code import CodeReader
from data_pipelines.sources.web import WebReader
from data_pipelines.stats import StageStats
from pretrain.core.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SAMPLES = os.path.join(REPO, "data_pipelines", "samples")


def test_readers_registry() -> None:
    assert sorted(READERS) == ["books", "code", "jsonl", "parquet", "web", "wiki"]
    assert isinstance(make_reader("cc", SourceConfig(kind="web", paths=["x"])), WebReader)


def test_the_source_kinds_in_messages_come_from_the_registry(tmp_path) -> None:
    from data_pipelines.config import validate
    from data_pipelines.sources.registry import READER_CLASSES, SOURCE_KINDS, _by_kind

    assert SOURCE_KINDS == tuple(cls.kind for cls in READER_CLASSES) == tuple(READERS)
    with pytest.raises(ConfigError, match=re.escape(f"unknown kind 'wikipedia'; expected one of {sorted(READERS)}")):
        make_reader("enwiki", {"kind": "wikipedia", "paths": ["x"]})
    cfg = OmegaConf.create({"output_dir": str(tmp_path), "sources": {"s": {"paths": ["x"]}}, "executor": {
        "workers": 1, "start_method": "spawn", "num_shards": 1, "shard": None, "stages": ["read"], "part_size_mb": 1,
        "batch_size": 1}})
    expected = f"sources.s.kind: missing; expected one of {', '.join(SOURCE_KINDS)}"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        validate(cfg)

    class Twin(WebReader):
        pass

    with pytest.raises(ValueError, match="Twin.kind = 'web'"):
        _by_kind((*READER_CLASSES, Twin))


def test_expand_paths_files_globs_dirs(tmp_path) -> None:
    for rel in ("b/2.jsonl", "b/1.jsonl", "a.jsonl", "b/.hidden.jsonl", "b/notes.md", "c/x.jsonl.gz"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}\n")
    got = expand_paths([str(tmp_path / "b"), str(tmp_path / "*.jsonl"), str(tmp_path / "b" / "1.jsonl")],
                       source="s", extensions=(".jsonl",))
    assert got == [str(tmp_path / "a.jsonl"), str(tmp_path / "b" / "1.jsonl"), str(tmp_path / "b" / "2.jsonl")]
    assert expand_paths(str(tmp_path / "**" / "*.jsonl*"), source="s") == [
        str(tmp_path / "a.jsonl"), str(tmp_path / "b" / "1.jsonl"), str(tmp_path / "b" / "2.jsonl"),
        str(tmp_path / "c" / "x.jsonl.gz")]
    # for code, a directory is one repository, never expanded into files
    assert expand_paths([str(tmp_path / "b")], source="code", directory_units=True) == [str(tmp_path / "b")]
    assert source_inputs("c", {"kind": "code", "paths": [str(tmp_path / "*")]}) == [
        str(tmp_path / "a.jsonl"), str(tmp_path / "b"), str(tmp_path / "c")]


@pytest.mark.parametrize("paths,message", [
    (["/no/such/dump.xml.bz2"], r"source 'enwiki': path '/no/such/dump.xml.bz2' does not exist"),
    (["/no/such/*.xml"], r"source 'enwiki': glob '/no/such/\*.xml' matches no file"),
    ([], r"source 'enwiki': 'paths' is empty"),
])
def test_expand_paths_errors_name_source_and_path(paths, message) -> None:
    with pytest.raises(ConfigError, match=message):
        source_inputs("enwiki", {"kind": "wiki", "paths": paths})


def test_directory_without_matching_files(tmp_path) -> None:
    (tmp_path / "readme.md").write_text("x")
    with pytest.raises(ConfigError, match=r"source 'w': path .* contains no input files ending with"):
        source_inputs("w", {"kind": "wiki", "paths": [str(tmp_path)]})


def test_make_reader_errors() -> None:
    with pytest.raises(ConfigError, match=r"source 'x': unknown kind 'pdf'; expected one of \['books', 'code', "
                                          r"'jsonl', 'parquet', 'web', 'wiki'\]"):
        make_reader("x", {"kind": "pdf", "paths": ["a"]})
    with pytest.raises(ConfigError, match=r"source 'x' \(kind 'web'\): unknown option\(s\) \['extracter'\]"):
        make_reader("x", {"kind": "web", "paths": ["a"], "options": {"extracter": "resiliparse"}})
    with pytest.raises(ConfigError, match=r"options.extractor must be one of \['resiliparse', 'trafilatura'\]"):
        make_reader("x", {"kind": "web", "paths": ["a"], "options": {"extractor": "lynx"}})
    with pytest.raises(ConfigError, match=r"options.invalid_utf8 must be 'replace' or 'skip'"):
        make_reader("x", {"kind": "jsonl", "paths": ["a"], "options": {"invalid_utf8": "ignore"}})
    with pytest.raises(ConfigError, match=r"source 'x': Key 'pathz' not in 'SourceConfig'"):
        source_config("x", {"kind": "wiki", "pathz": ["a"]})
    with pytest.raises(ConfigError, match=r"source 'x': .*missing mandatory value: kind"):
        source_config("x", {"paths": ["a"]})
    assert source_config("x", {"kind": "books", "paths": "one.txt"}).paths == ["one.txt"]


def _compose(tmp_path, overrides: list[str]):
    (tmp_path / "sources").symlink_to(os.path.join(REPO, "conf", "sources"))
    (tmp_path / "root.yaml").write_text("defaults:\n  - _self_\n  - sources: samples\n")
    with initialize_config_dir(str(tmp_path), version_base="1.3"):
        return compose("root", overrides=overrides)


def test_hydra_samples_preset_from_any_directory(tmp_path, in_other_dir) -> None:
    cfg = _compose(tmp_path, [])
    assert sorted(cfg.sources) == ["books", "code", "web", "wiki"]
    assert OmegaConf.to_container(cfg.sources.web, resolve=True)["paths"] == [os.path.join(SAMPLES, "web")]
    counts = {}
    for name, node in cfg.sources.items():
        reader, stats = make_reader(name, node), StageStats()
        counts[name] = sum(1 for path in source_inputs(name, node) for _ in reader.read(path, stats))
        assert stats.docs_in == stats.docs_out + sum(stats.dropped.values()) + sum(stats.skipped.values())
    # web and code include the planted duplicates (make_samples.py): 2 web pages, 1 vendored source file
    assert counts == {"web": 14, "wiki": 2, "books": 2, "code": 10}


def test_hydra_sources_none_plus_command_line_source(tmp_path) -> None:
    cfg = _compose(tmp_path, ["sources=none", "+sources.enwiki={kind: wiki, paths: [/data/enwiki.xml.bz2]}"])
    assert list(cfg.sources) == ["enwiki"]
    conf = source_config("enwiki", cfg.sources.enwiki)
    assert conf == SourceConfig(kind="wiki", paths=["/data/enwiki.xml.bz2"], options={})
    assert type(make_reader("enwiki", cfg.sources.enwiki)).__name__ == "WikiReader"
    with pytest.raises(ConfigError, match="source 'enwiki': path '/data/enwiki.xml.bz2' does not exist"):
        source_inputs("enwiki", cfg.sources.enwiki)


def test_package_path_resolver() -> None:
    assert package_path("data_pipelines/samples/web") == os.path.join(SAMPLES, "web")
    assert OmegaConf.create({"p": "${pkg:data_pipelines/samples}"}).p == SAMPLES
    with pytest.raises(ConfigError, match="no installed package named 'nopkg_xyz'"):
        package_path("nopkg_xyz/data")


def test_make_samples_is_deterministic_and_matches_bundle(tmp_path) -> None:
    make_samples(str(tmp_path / "one"))
    # a second process: nothing process-specific (memory addresses, hash seeds) may leak into the samples
    subprocess.run([sys.executable, "-m", "data_pipelines.samples.make_samples", "--out", str(tmp_path / "two")],
                   check=True, cwd=REPO, env={**os.environ, "PYTHONHASHSEED": "123"})
    files = sorted(os.path.relpath(os.path.join(d, f), tmp_path / "one")
                   for d, _, fs in os.walk(tmp_path / "one") for f in fs)
    bundled = sorted(os.path.relpath(os.path.join(d, f), SAMPLES) for kind in ("web", "wiki", "books", "code")
                     for d, _, fs in os.walk(os.path.join(SAMPLES, kind)) for f in fs if "__pycache__" not in d)
    assert files == bundled
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "one", tmp_path / "two", files, shallow=False)
    assert mismatch == [] and errors == []
    total = sum(os.path.getsize(os.path.join(SAMPLES, f)) for f in bundled)
    assert total < 3 * (1 << 20)


def test_code_reader_is_directory_unit() -> None:
    assert CodeReader.directory_units and not WebReader.directory_units
