"""Filters from config: registry, parameter checking with clear errors, the per-source lookup, the YAML group."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data_pipelines.filters import (
    BLOCKS,
    SOURCE_KINDS,
    FiltersConfig,
    build_blocks,
    filter_spec_for_source,
    filters_for_source,
)
from data_pipelines.filters.gopher import GopherQuality
from data_pipelines.filters.language import LanguageFilter
from data_pipelines.filters.normalize import Normalize
from data_pipelines.filters.pii import PIIRedactor
from pretrain.core.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf" / "filters"


def load(name: str):
    """A filters group file merged into its typed schema, as Hydra composes it."""
    return OmegaConf.merge(OmegaConf.structured(FiltersConfig), OmegaConf.load(CONF / f"{name}.yaml"))


def test_build_blocks_from_plain_dicts_and_omegaconf():
    spec = [{"name": "normalize", "max_newlines": 1}, {"name": "gopher_quality", "min_doc_words": 20,
                                                        "max_doc_words": None}]
    for given in (spec, OmegaConf.create(spec)):
        normalize, gopher = build_blocks(given, "filters.web")
        assert isinstance(normalize, Normalize) and normalize.max_newlines == 1
        assert isinstance(gopher, GopherQuality) and (gopher.min_doc_words, gopher.max_doc_words) == (20, None)
    assert build_blocks([], "filters.web") == [] and build_blocks(None, "filters.web") == []


@pytest.mark.parametrize(
    "item, message",
    [
        ({"name": "gopher"}, r"filters\.web\[1\]: unknown filter block 'gopher'; accepted blocks: c4, code, "
                             r"fineweb, gopher_quality, gopher_repetition, language, normalize, pii"),
        ({"min_doc_words": 3}, r"filters\.web\[1\]: missing 'name'; accepted blocks: c4, code"),
        ({"name": "gopher_quality", "min_words": 3},
         r"filters\.web\[1\] \(gopher_quality\): unknown parameter 'min_words'; accepted: bullets, max_avg_word_length"
         r".*min_doc_words"),
        ({"name": "gopher_quality", "min_doc_words": "fifty"},
         r"filters\.web\[1\] \(gopher_quality\): parameter 'min_doc_words' = 'fifty' has the wrong type: "
         r"expected int or null"),
        ({"name": "gopher_quality", "min_doc_words": 2.5}, r"'min_doc_words' = 2.5 has the wrong type"),
        ({"name": "c4", "filter_javascript": 1}, r"\(c4\): parameter 'filter_javascript' = 1 .*expected bool"),
        ({"name": "normalize", "max_newlines": True}, r"'max_newlines' = True .*expected int or null"),
        ({"name": "language", "languages": "en"}, r"\(language\): parameter 'languages' = 'en' .*list of str or null"),
        ({"name": "gopher_repetition", "top_n_grams": {2: "high"}},
         r"'top_n_grams' .*expected mapping of int to float or null"),
        ({"name": "gopher_repetition", "dup_n_grams": {1200: 0.1}},
         r"\(gopher_repetition\): parameter 'dup_n_grams' = \{1200: 0.1\} is invalid: .*1 <= n <= 100"),
        ({"name": "gopher_quality", "min_stop_words": -1},
         r"\(gopher_quality\): parameter 'min_stop_words' = -1 is invalid: expected a non-negative integer"),
        ({"name": "language", "threshold": 1.5}, r"filters\.web\[1\] \(language\): parameter 'threshold' = 1.5 "
                                                 r"is invalid: expected a probability between 0 and 1"),
        ({"name": "pii", "kinds": ["email", "ssn"]}, r"\(pii\): parameter 'kinds' = \['ssn'\] is invalid"),
        ("normalize", r"filters\.web\[1\]: expected a mapping like \{name: gopher_quality, \.\.\.\}"),
    ],
)
def test_config_errors_name_the_place_the_block_and_the_parameter(item, message):
    with pytest.raises(ConfigError, match=message):
        build_blocks([{"name": "normalize"}, item], "filters.web")


def test_a_list_is_required():
    with pytest.raises(ConfigError, match=r"filters\.web: expected a list of filter blocks"):
        build_blocks({"name": "normalize"}, "filters.web")


def test_ints_are_accepted_for_float_parameters():
    (gopher,) = build_blocks([{"name": "gopher_quality", "max_symbol_word_ratio": 0}], "filters.web")
    assert gopher.max_symbol_word_ratio == 0


def test_default_group_builds_every_kind():
    cfg = load("default")
    for kind in SOURCE_KINDS:
        blocks = filters_for_source(cfg, f"my_{kind}", kind)
        assert blocks, kind
        assert all(type(b) in BLOCKS.values() for b in blocks)
    web = [b.name for b in filters_for_source(cfg, "cc", "web")]
    assert web == ["normalize", "language", "gopher_quality", "gopher_repetition", "c4", "fineweb", "pii"]
    code = filters_for_source(cfg, "stdlib", "code")
    assert [b.name for b in code] == ["normalize", "code", "pii"]
    assert "secret" in code[-1].kinds and code[0].collapse_spaces is False


def test_none_group_switches_every_stage_off():
    cfg = load("none")
    for kind in SOURCE_KINDS:
        assert filters_for_source(cfg, "x", kind) == []


def test_lookup_by_source_name_first_then_kind_and_overrides():
    cfg = load("default")
    cfg.by_source = {"forum": [{"name": "normalize"}, {"name": "language", "languages": ["de"]}]}
    OmegaConf.update(cfg, "web.2.min_doc_words", 100)  # what Hydra does for `+filters.web.2.min_doc_words=100`
    spec, where = filter_spec_for_source(cfg, "forum", "web")
    assert where == "filters.by_source.forum"
    normalize, language = filters_for_source(cfg, "forum", "web")
    assert isinstance(language, LanguageFilter) and language.languages == ["de"]
    gopher = filters_for_source(cfg, "other_site", "web")[2]
    assert isinstance(gopher, GopherQuality) and gopher.min_doc_words == 100
    cfg.by_source = {"forum": [{"name": "pii", "kind": ["email"]}]}
    with pytest.raises(ConfigError, match=r"filters\.by_source\.forum\[0\] \(pii\): unknown parameter 'kind'; "
                                          r"accepted: kinds, redact_private_ips, secret_patterns"):
        filters_for_source(cfg, "forum", "web")


def test_lookup_errors():
    with pytest.raises(ConfigError, match=r"source 'enwiki': unknown kind 'wikipedia'; accepted: web, wiki, books"):
        filters_for_source(load("default"), "enwiki", "wikipedia")
    with pytest.raises(ConfigError, match=r"filters: unknown key\(s\) \['webb'\]"):
        filters_for_source({"webb": []}, "x", "web")


def test_schema_rejects_unknown_group_keys():
    with pytest.raises(Exception, match="webb"):
        OmegaConf.merge(OmegaConf.structured(FiltersConfig), {"webb": []})


def test_yaml_defaults_match_the_reference_thresholds():
    cfg = load("default")
    _, _, quality, repetition, c4, fineweb, pii = filters_for_source(cfg, "cc", "web")
    assert (quality.min_doc_words, quality.max_doc_words, quality.min_avg_word_length, quality.max_avg_word_length,
            quality.max_symbol_word_ratio, quality.max_bullet_lines_ratio, quality.max_ellipsis_lines_ratio,
            quality.min_alpha_words_ratio, quality.min_stop_words) == (50, 100000, 3, 10, 0.1, 0.9, 0.3, 0.8, 2)
    assert repetition.top_n_grams == {2: 0.20, 3: 0.18, 4: 0.16}
    assert repetition.dup_n_grams == {5: 0.15, 6: 0.14, 7: 0.13, 8: 0.12, 9: 0.11, 10: 0.10}
    assert (repetition.dup_line_frac, repetition.dup_para_frac, repetition.dup_line_char_frac,
            repetition.dup_para_char_frac) == (0.3, 0.3, 0.2, 0.2)
    assert (c4.min_num_sentences, c4.min_words_per_line, c4.max_word_length) == (5, 3, 1000)
    assert (fineweb.line_punct_thr, fineweb.short_line_thr, fineweb.short_line_length,
            fineweb.char_duplicates_ratio, fineweb.new_line_ratio) == (0.12, 0.67, 30, 0.01, 0.3)
    assert isinstance(pii, PIIRedactor) and pii.kinds == ["secret", "email", "ip", "phone"]
    # web prose: URL credentials and fixed-prefix tokens, not the name = value rules of code and config files
    assert "url_credentials" in pii.secret_patterns and "assignment" not in pii.secret_patterns
    assert pii.redact("see mysql://root:pa$$w0rd@db.example.org/x")[0] == "see mysql://root:<SECRET>@db.example.org/x"


def test_the_filters_schema_and_the_block_list_come_from_the_registries():
    """A new source kind gets its filter list, a new block its name, without an edit in filters/config.py."""
    from dataclasses import fields

    from data_pipelines.filters.registry import BLOCK_CLASSES, _by_name
    from data_pipelines.sources.registry import READERS

    assert [f.name for f in fields(FiltersConfig)] == [*READERS, "by_source"] == [*SOURCE_KINDS, "by_source"]
    assert list(BLOCKS) == [cls.name for cls in BLOCK_CLASSES]
    assert set(load("default")) <= {*SOURCE_KINDS, "by_source"}
    with pytest.raises(ConfigError, match="unknown key"):
        filter_spec_for_source({"webb": []}, "cc", "web")

    class Twin(Normalize):
        pass

    with pytest.raises(ValueError, match="Twin.name = 'normalize'"):
        _by_name((*BLOCK_CLASSES, Twin))
