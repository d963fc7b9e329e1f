"""Text filters on real-looking documents: each good text kept, each bad pattern dropped with its reason,
each threshold configurable. (Code rules and PII: test_filters_code_pii.py; config: test_filters_config.py.)"""

from __future__ import annotations

import pickle

import pytest
from omegaconf import OmegaConf

from data_pipelines.document import Document
from data_pipelines.filters import filters_for_source, run_blocks
from data_pipelines.filters.c4 import C4Filter
from data_pipelines.filters.fineweb import FineWebFilter
from data_pipelines.filters.gopher import GopherQuality, GopherRepetition
from data_pipelines.filters.language import LanguageFilter
from data_pipelines.filters.normalize import Normalize
from data_pipelines.stats import StageStats
from pretrain.core.errors import ConfigError

GOOD_PROSE = """\
The old harbour town sits at the mouth of a narrow river, where fishing boats have landed their catch for more than three hundred years. Visitors who arrive in the early morning can watch the crews sort mackerel and crab on the quay before the market opens.

Most of the houses near the water were built from local granite after a fire destroyed the wooden buildings in 1789. The narrow lanes that climb the hill behind the harbour still follow the paths of the medieval town, and several of them are too steep for cars.

The museum on the main square tells the story of the town through letters, photographs and tools donated by local families. A small room on the first floor is devoted to the lifeboat crew, whose members have rescued hundreds of sailors from the rocks outside the bay.

In the summer, a ferry runs twice a day to the island across the bay, and the crossing takes about forty minutes. It is worth checking the timetable before you travel, because the boat does not sail when the wind is strong."""

GERMAN = """\
Die alte Hafenstadt liegt an der Mündung eines schmalen Flusses, wo Fischerboote seit mehr als dreihundert Jahren ihren Fang anlanden. Wer früh am Morgen ankommt, kann zusehen, wie die Mannschaften Makrelen und Krebse auf dem Kai sortieren, bevor der Markt öffnet. Die meisten Häuser am Wasser wurden nach einem großen Brand aus einheimischem Granit gebaut, und die engen Gassen hinter dem Hafen folgen noch heute den Wegen der mittelalterlichen Stadt."""

FRENCH = """\
La vieille ville portuaire se trouve à l'embouchure d'une rivière étroite, où les bateaux de pêche débarquent leurs prises depuis plus de trois cents ans. Les visiteurs qui arrivent tôt le matin peuvent regarder les équipages trier les maquereaux et les crabes sur le quai avant l'ouverture du marché. La plupart des maisons au bord de l'eau ont été construites en granit local après un incendie, et les ruelles étroites suivent encore les chemins de la ville médiévale."""


def doc(text: str, i: int = 0, **metadata) -> Document:
    return Document(id=f"doc-{i}", text=text, source="test", metadata={"file": "sample.txt", **metadata})


def run(block, texts, **metadata) -> tuple[list[Document], StageStats]:
    """Run one block over ``texts``; check the stats add up (every document kept or dropped with a reason)."""
    stats = StageStats()
    docs = [doc(t, i, **metadata) for i, t in enumerate(texts)]
    out = list(block(iter(docs), stats))
    assert stats.docs_in == len(texts)
    assert stats.docs_out == len(out)
    assert stats.docs_in == stats.docs_out + sum(stats.dropped.values())
    return out, stats


def only_drop(block, text: str, **metadata) -> str | None:
    """The reason ``block`` drops ``text``, or None if it keeps it."""
    out, stats = run(block, [text], **metadata)
    if out:
        return None
    (reason,) = stats.dropped
    return reason


PARAGRAPHS = GOOD_PROSE.split("\n\n")


# ----------------------------------------------------------------------------------------------- normalize
def test_normalize_unicode_whitespace_and_control_chars():
    text = "Cafe\u0301 \u00a0 menu\t\t today \x00\x07\u200b\r\n\r\n\r\n\r\nSecond   line  \x0bthird\u2028fourth  "
    (out,), stats = run(Normalize(), [text])
    assert out.text == "Café menu today\n\nSecond line\nthird\nfourth"
    assert stats.modified == {"normalize_unicode": 1, "normalize_control_chars": 1, "normalize_whitespace": 1}
    assert stats.bytes_out < stats.bytes_in


def test_normalize_keeps_clean_text_untouched_and_counts_nothing():
    (out,), stats = run(Normalize(), [GOOD_PROSE])
    assert out.text == GOOD_PROSE and not stats.modified


def test_normalize_options_for_code_and_other_forms():
    code = "def f(x):\n    if x:\n\n\n\n        return  x   \n"
    (out,), _ = run(Normalize(collapse_spaces=False, strip_leading=False, max_newlines=3), [code])
    assert out.text == "def f(x):\n    if x:\n\n\n        return  x"
    (out,), _ = run(Normalize(max_newlines=1), ["a\n\n\nb"])
    assert out.text == "a\nb"
    (out,), _ = run(Normalize(form="NFKC"), ["ﬁnal ①"])
    assert out.text == "final 1"
    (out,), stats = run(Normalize(form=None, remove_control=False), ["Cafe\u0301\x07"])
    assert out.text == "Cafe\u0301\x07" and not stats.modified


def test_normalize_drops_documents_left_empty():
    out, stats = run(Normalize(), ["\x00\u200b \t\r\n", "  \n ", ""])
    assert out == [] and stats.dropped == {"normalize_empty": 3}


def test_normalize_rejects_unknown_form():
    with pytest.raises(ConfigError, match="form.*NFC, NFD, NFKC, NFKD"):
        Normalize(form="NFX")


# ------------------------------------------------------------------------------------------------ language
def test_language_keeps_english_and_drops_german_and_french():
    out, stats = run(LanguageFilter(), [GOOD_PROSE, GERMAN, FRENCH])
    assert [d.id for d in out] == ["doc-0"]
    assert out[0].metadata["lang"] == "en" and out[0].metadata["lang_score"] >= 0.65
    assert stats.dropped == {"lang_below_threshold": 2}
    assert stats.extra["lang_detected"] == {"en": 1, "de": 1, "fr": 1}


def test_language_list_and_threshold_are_configurable():
    out, _ = run(LanguageFilter(languages=["en", "de"]), [GOOD_PROSE, GERMAN, FRENCH])
    assert [(d.id, d.metadata["lang"]) for d in out] == [("doc-0", "en"), ("doc-1", "de")]
    out, _ = run(LanguageFilter(languages=[]), [GERMAN, FRENCH])
    assert [d.metadata["lang"] for d in out] == ["de", "fr"]
    # A short, ambiguous snippet scores low: kept with a permissive threshold only.
    snippet = "Hello there"
    assert run(LanguageFilter(), [snippet])[0] == []
    assert len(run(LanguageFilter(threshold=0.0), [snippet])[0]) == 1


def test_language_rejects_unknown_codes():
    with pytest.raises(ConfigError, match="languages.*xx"):
        LanguageFilter(languages=["en", "xx"])


# ---------------------------------------------------------------------------------------- gopher quality
BAD_FOR_GOPHER_QUALITY = {
    "gopher_short_doc": "Take the bus to the harbour.",
    "gopher_short_words": " ".join(["to be or not to be it is so"] * 8),
    "gopher_long_words": " ".join(["internationalization telecommunications characteristically the"] * 15),
    "gopher_hash_ratio": GOOD_PROSE + "\n\n" + " ".join(f"#harbour{i} #travel{i}" for i in range(20)),
    "gopher_ellipsis_ratio": GOOD_PROSE.replace(" the ", " the… "),
    "gopher_bullet_lines": "\n".join(f"• Fresh crab and the catch of the day from boat {i}" for i in range(12)),
    "gopher_ellipsis_lines": "\n".join(p + (" And then..." if i % 2 else "") for i, p in enumerate(PARAGRAPHS * 2)),
    "gopher_non_alpha_words": " ".join(f"the {1000 + i} and {2000 + i}" for i in range(20)),
    "gopher_few_stop_words": " ".join(["Cheap flights hotels rentals insurance deals"] * 10),
}


def test_gopher_quality_keeps_good_prose():
    assert only_drop(GopherQuality(), GOOD_PROSE) is None


@pytest.mark.parametrize("reason", sorted(BAD_FOR_GOPHER_QUALITY))
def test_gopher_quality_drops_each_bad_pattern_with_its_reason(reason):
    assert only_drop(GopherQuality(), BAD_FOR_GOPHER_QUALITY[reason]) == reason


@pytest.mark.parametrize(
    "reason, relaxed",
    [
        ("gopher_short_doc", {"min_doc_words": 5}),
        ("gopher_short_words", {"min_avg_word_length": 2}),
        ("gopher_long_words", {"max_avg_word_length": None}),
        ("gopher_hash_ratio", {"max_symbol_word_ratio": 0.5}),
        ("gopher_ellipsis_ratio", {"max_symbol_word_ratio": None}),
        ("gopher_bullet_lines", {"max_bullet_lines_ratio": None}),
        ("gopher_ellipsis_lines", {"max_ellipsis_lines_ratio": 0.6}),
        ("gopher_non_alpha_words", {"min_alpha_words_ratio": 0.5}),
        ("gopher_few_stop_words", {"min_stop_words": 0}),
    ],
)
def test_gopher_quality_thresholds_are_configurable(reason, relaxed):
    assert only_drop(GopherQuality(**relaxed), BAD_FOR_GOPHER_QUALITY[reason]) is None


def test_gopher_quality_max_words_and_custom_lists():
    assert only_drop(GopherQuality(max_doc_words=100), GOOD_PROSE) == "gopher_long_doc"
    huge = "word and the " * 40_000  # streamed count: never split into a 120k-word list
    assert only_drop(GopherQuality(max_doc_words=1000), huge) == "gopher_long_doc"
    assert only_drop(GopherQuality(stop_words=["harbour"], min_stop_words=2), GOOD_PROSE) is None
    assert only_drop(GopherQuality(stop_words=["zebra"]), GOOD_PROSE) == "gopher_few_stop_words"
    dashes = "\n".join(f"- Fresh crab and the catch of the day from boat {i}" for i in range(12))
    assert only_drop(GopherQuality(), dashes) == "gopher_bullet_lines"
    assert only_drop(GopherQuality(bullets=["•"]), dashes) is None


def test_gopher_quality_rejects_inconsistent_limits():
    with pytest.raises(ConfigError, match="min_doc_words"):
        GopherQuality(min_doc_words=10, max_doc_words=5)
    with pytest.raises(ConfigError, match="max_bullet_lines_ratio"):
        GopherQuality(max_bullet_lines_ratio=1.5)


# ------------------------------------------------------------------------------------- gopher repetition
NAV = "Share this article with your friends and family."
REPEATED_SENTENCE = "The council voted to close the old bridge to all traffic until repairs are finished."
BAD_FOR_GOPHER_REPETITION = {
    "gopher_dup_line_frac": GOOD_PROSE + "\n\n" + "\n".join([NAV] * 4),
    "gopher_dup_para_frac": "\n\n".join(PARAGRAPHS + [PARAGRAPHS[0]] * 2),
    "gopher_dup_para_char_frac": "\n\n".join([PARAGRAPHS[0] + " " + PARAGRAPHS[1]] + PARAGRAPHS[2:]
                                             + ["Notes.", "More notes.", PARAGRAPHS[0] + " " + PARAGRAPHS[1]]),
    "gopher_top_2_gram": " ".join(f"buy now item{i}" for i in range(40)),
    "gopher_dup_5_gram": PARAGRAPHS[0] + " " + " ".join([REPEATED_SENTENCE] * 3),
}


def test_gopher_repetition_keeps_good_prose():
    assert only_drop(GopherRepetition(), GOOD_PROSE) is None


@pytest.mark.parametrize("reason", sorted(BAD_FOR_GOPHER_REPETITION))
def test_gopher_repetition_drops_each_bad_pattern_with_its_reason(reason):
    assert only_drop(GopherRepetition(), BAD_FOR_GOPHER_REPETITION[reason]) == reason


@pytest.mark.parametrize(
    "reason, relaxed",
    [
        ("gopher_dup_line_frac", {"dup_line_frac": 0.5}),
        ("gopher_dup_para_frac", {"dup_para_frac": None, "dup_para_char_frac": None, "dup_line_frac": None,
                                  "dup_line_char_frac": None, "dup_n_grams": {}}),
        ("gopher_dup_para_char_frac", {"dup_para_char_frac": 0.9, "dup_line_char_frac": 0.9, "dup_n_grams": {}}),
        ("gopher_top_2_gram", {"top_n_grams": {2: 0.9, 3: 0.9, 4: 0.9}}),
        ("gopher_dup_5_gram", {"dup_n_grams": {6: 0.5}}),
    ],
)
def test_gopher_repetition_thresholds_are_configurable(reason, relaxed):
    assert only_drop(GopherRepetition(**relaxed), BAD_FOR_GOPHER_REPETITION[reason]) is None


def test_gopher_ngram_hashing_matches_the_string_reference():
    """The numpy n-gram hashes give exactly the counts of datatrove's string implementation."""
    import random
    from collections import Counter

    from data_pipelines.filters.gopher import _NGrams

    def grams(words, n):
        return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]

    def top_chars(words, n):
        gram, count = Counter(grams(words, n)).most_common(1)[0]
        return len(gram) * count

    def duplicated_chars(words, n):
        g, seen, chars, idx = grams(words, n), set(), 0, 0
        while idx < len(g):
            if g[idx] in seen:
                chars, idx = chars + len(g[idx]), idx + n
            else:
                seen.add(g[idx])
                idx += 1
        return chars

    rng = random.Random(7)
    for vocab in (2, 5, 30, 1000):
        for _ in range(10):
            words = ["w" * rng.randint(1, 4) + str(rng.randrange(vocab)) for _ in range(rng.randint(10, 300))]
            ngrams = _NGrams(words)
            for n in range(2, 11):
                assert ngrams.top_chars(n) == top_chars(words, n)
                assert ngrams.duplicated_chars(n) == duplicated_chars(words, n)


def test_gopher_repetition_blank_lines_between_paragraphs_are_not_duplicates():
    many_paragraphs = "\n\n".join(f"Paragraph {i} tells a different part of the story of the town." for i in range(30))
    assert only_drop(GopherRepetition(top_n_grams={}, dup_n_grams={}), many_paragraphs) is None


# ---------------------------------------------------------------------------------------------------- c4
def test_c4_keeps_good_prose_unchanged():
    (out,), stats = run(C4Filter(), [GOOD_PROSE])
    assert out.text == GOOD_PROSE and not stats.modified


@pytest.mark.parametrize(
    "reason, bad_line",
    [
        ("c4_lorem_ipsum", "Lorem ipsum dolor sit amet, consectetur adipiscing elit."),
        ("c4_curly_bracket", "The template prints {name} in place of the visitor's name."),
    ],
)
def test_c4_drops_whole_documents(reason, bad_line):
    assert only_drop(C4Filter(), GOOD_PROSE + "\n" + bad_line) == reason


def test_c4_removes_bad_lines_and_counts_them():
    page = "\n".join([
        "Home | Harbour | Museum | Ferry",
        PARAGRAPHS[0],
        "Please enable JavaScript to view the comments powered by Disqus.",
        PARAGRAPHS[1] + "[3]",
        "Thanks!",
        "By using this site you agree to our Privacy Policy and Terms of Use.",
        "x" * 1001 + " is not a word.",
        PARAGRAPHS[2],
    ])
    (out,), stats = run(C4Filter(), [page])
    assert out.text == "\n".join(PARAGRAPHS[:3])
    assert stats.extra["c4_lines_removed"] == {
        "no_terminal_punct": 1, "javascript": 1, "too_few_words": 1, "policy": 1, "long_word": 1}
    assert stats.modified == {"c4_line_no_terminal_punct": 1, "c4_line_javascript": 1, "c4_line_too_few_words": 1,
                              "c4_line_policy": 1, "c4_line_long_word": 1, "c4_citations_removed": 1}


def test_c4_too_few_sentences_and_configurable_rules():
    short = "The ferry leaves at noon. It returns at six."
    assert only_drop(C4Filter(), short) == "c4_too_few_sentences"
    assert only_drop(C4Filter(min_num_sentences=2), short) is None
    assert only_drop(C4Filter(filter_lorem_ipsum=False), GOOD_PROSE + "\nLorem ipsum dolor sit amet.") is None
    assert only_drop(C4Filter(filter_curly_bracket=False), GOOD_PROSE + "\nUse {name} here.") is None
    page = GOOD_PROSE + "\nHarbour Museum opening hours\nOur site uses cookies to work."
    (out,), _ = run(C4Filter(filter_no_terminal_punct=False, filter_policy=False), [page])
    assert out.text.endswith("Harbour Museum opening hours\nOur site uses cookies to work.")
    (out,), _ = run(C4Filter(policy_substrings=["opening hours"], filter_no_terminal_punct=False), [page])
    assert "opening hours" not in out.text and "uses cookies" in out.text
    (out,), _ = run(C4Filter(min_words_per_line=None), [GOOD_PROSE + "\nThanks!"])
    assert out.text.endswith("Thanks!")
    (out,), _ = run(C4Filter(remove_citations=False), [GOOD_PROSE.replace("in 1789.", "in 1789.[3]")])
    assert "in 1789.[3]" in out.text


# ----------------------------------------------------------------------------------------------- fineweb
BAD_FOR_FINEWEB = {
    # Every sentence on its own line without its full stop, like a page of headlines.
    "fineweb_line_punct_ratio": GOOD_PROSE.replace("\n\n", " ").replace(". ", "\n").rstrip("."),
    "fineweb_short_line_ratio": "\n".join([PARAGRAPHS[0]] + [f"Photo {i} of the quay." for i in range(6)]),
    "fineweb_char_dup_ratio": "\n".join(PARAGRAPHS + ["Read more about the harbour."] * 2),
    "fineweb_list_ratio": "\n".join(f"Unquestionably remarkable achievement{i}." for i in range(20)),
}


def test_fineweb_keeps_good_prose():
    assert only_drop(FineWebFilter(), GOOD_PROSE) is None


@pytest.mark.parametrize("reason", sorted(BAD_FOR_FINEWEB))
def test_fineweb_drops_each_bad_pattern_with_its_reason(reason):
    assert only_drop(FineWebFilter(), BAD_FOR_FINEWEB[reason]) == reason


@pytest.mark.parametrize(
    "reason, relaxed",
    [
        ("fineweb_line_punct_ratio", {"line_punct_thr": None}),
        ("fineweb_line_punct_ratio", {"line_punct_exclude_zero": True}),
        ("fineweb_line_punct_ratio", {"stop_chars": list("abcdefghijklmnopqrstuvwxyz")}),
        ("fineweb_short_line_ratio", {"short_line_length": 10}),
        ("fineweb_char_dup_ratio", {"char_duplicates_ratio": 0.2}),
        ("fineweb_list_ratio", {"new_line_ratio": 0.5}),
    ],
)
def test_fineweb_thresholds_are_configurable(reason, relaxed):
    assert only_drop(FineWebFilter(**relaxed), BAD_FOR_FINEWEB[reason]) is None


# ------------------------------------------------------------------------------------------ whole chains
def _web_blocks():
    return filters_for_source(OmegaConf.load("conf/filters/default.yaml"), "site", "web")


def test_default_web_chain_keeps_prose_and_drops_junk_with_reasons():
    texts = [GOOD_PROSE, GERMAN, BAD_FOR_GOPHER_QUALITY["gopher_hash_ratio"],
             BAD_FOR_GOPHER_REPETITION["gopher_dup_para_frac"], GOOD_PROSE + "\nLorem ipsum dolor sit amet.",
             BAD_FOR_FINEWEB["fineweb_line_punct_ratio"],
             GOOD_PROSE.replace("the timetable", "the timetable (ask ferry@harbour-town.org)"), "\x00 \u200b"]
    blocks = _web_blocks()
    stats = [StageStats() for _ in blocks]
    docs = [doc(t, i) for i, t in enumerate(texts)]
    out = list(run_blocks(blocks, iter(docs), stats))
    assert [d.id for d in out] == ["doc-0", "doc-6"]
    assert out[0].text == GOOD_PROSE
    assert "(ask <EMAIL>)" in out[1].text
    dropped = {}
    for s in stats:
        dropped.update(s.dropped)
    assert dropped == {"normalize_empty": 1, "lang_below_threshold": 1, "gopher_hash_ratio": 1,
                       "gopher_dup_para_frac": 1, "c4_lorem_ipsum": 1, "fineweb_line_punct_ratio": 1}
    assert stats[-1].modified == {"pii_email": 1}
    # Each block sees exactly what the previous one kept.
    assert [s.docs_in for s in stats[1:]] == [s.docs_out for s in stats[:-1]]


def test_chain_is_deterministic_and_blocks_pickle_for_worker_processes():
    texts = [GOOD_PROSE, GERMAN, GOOD_PROSE.replace("harbour", "harbour 93.184.216.34")]

    def once(blocks):
        stats = [StageStats() for _ in blocks]
        out = [(d.id, d.text, sorted(d.metadata.items())) for d in
               run_blocks(blocks, [doc(t, i) for i, t in enumerate(texts)], stats)]
        return out, [s.to_dict() for s in stats]

    blocks = _web_blocks()
    first = once(blocks)
    assert first == once(_web_blocks())
    assert first == once(pickle.loads(pickle.dumps(blocks)))


def test_run_blocks_needs_one_stats_per_block():
    with pytest.raises(ValueError, match="2 blocks but 1 stats"):
        run_blocks([Normalize(), Normalize()], [], [StageStats()])


def test_every_block_drops_empty_documents_with_its_own_reason():
    for block in (LanguageFilter(), GopherQuality(), GopherRepetition(), C4Filter(), FineWebFilter()):
        out, stats = run(block, ["", "   \n\n  "])
        assert out == [] and stats.dropped == {f"{block.name}_empty": 2}



@pytest.mark.parametrize("kind, reason", [("web", "lang_below_threshold"), ("books", "gopher_long_doc"),
                                          ("code", "code_max_line_length")])
def test_a_huge_single_line_is_dropped_with_a_reason(kind, reason):
    blocks = filters_for_source(OmegaConf.load("conf/filters/default.yaml"), "x", kind)
    if kind == "books":
        blocks[1].max_doc_words = 10_000  # the streamed word count, without building a 4 MB test text
    stats = [StageStats() for _ in blocks]
    huge = "word and the " * 300_000  # 3.9 MB on one line
    assert list(run_blocks(blocks, [doc(huge, path="a.py")], stats)) == []
    assert [reason] == [r for s in stats for r in s.dropped]
