"""Wikipedia text: real-article markup (tests/pipeline/wiki_articles.py) leaves no wikitext behind, appendix
sections are dropped by default, math and code blocks follow their options."""

from __future__ import annotations

import mwparserfromhell
import pytest

from data_pipelines.samples.make_samples import WikiPage, write_wiki_dump
from data_pipelines.sources import make_reader
from data_pipelines.sources.wikitext import _cut_unclosed_comment, strip_quotes, wikitext_to_text
from data_pipelines.stats import StageStats

from .wiki_articles import APPENDIX_TEXT, ARTICLES, EXPECTED_PROSE, LEFTOVER_MARKUP


def read_articles(tmp_path, **options) -> dict[str, str]:
    pages = [WikiPage(title, text, page_id=i + 1) for i, (title, text) in enumerate(ARTICLES.items())]
    path = write_wiki_dump(str(tmp_path / "enwiki-excerpt-pages-articles-multistream.xml.bz2"), pages, "enwiki")
    reader = make_reader("wiki", {"kind": "wiki", "paths": [path], "options": options})
    stats = StageStats()
    docs = list(reader.read(path, stats))
    assert stats.docs_out == len(ARTICLES) and not stats.skipped, stats
    return {d.metadata["title"]: d.text for d in docs}


def test_real_articles_leave_no_markup(tmp_path):
    texts = read_articles(tmp_path)
    for title, text in texts.items():
        assert [m for m in LEFTOVER_MARKUP if m in text] == [], (title, text)
        assert [p for p in EXPECTED_PROSE[title] if p not in text] == [], (title, text)
        assert [a for a in APPENDIX_TEXT if a in text] == [], title  # non-prose sections dropped by default
        assert "a^2" not in text and "def is_triple" not in text and "print(" not in text
    # the parser's default settings are what left markup in real articles (the bug this fixes)
    default = mwparserfromhell.parse(ARTICLES["Iliad"])
    assert any(m in str(default.strip_code()) for m in ("<ref", "{{", "{|", "'''")) or "''" in str(default)


def test_math_code_and_sections_by_option(tmp_path):
    texts = read_articles(tmp_path, keep_math=True, keep_code=True, drop_sections=["external links"])
    pyth, python = texts["Pythagorean theorem"], texts["Python (programming language)"]
    assert "a^2 + b^2 = c^2" in pyth and "def is_triple(a, b, c):\n    return a * a + b * b == c * c" in pyth
    assert 'print("Hello, world!")' in python
    assert "See also" in pyth and "Law of cosines" in pyth and "Robson, Eleanor" not in pyth  # <references> tag
    assert "External links" not in python and "Official website" not in python


def test_a_section_the_parser_rejects_costs_only_that_section(monkeypatch, tmp_path):
    from data_pipelines.sources import wikitext

    real = wikitext.parse

    def fragile(text):
        if "Themes" in text or "Fate, glory" in text:
            raise ValueError("parser gave up")
        return real(text)

    monkeypatch.setattr(wikitext, "parse", fragile)
    failed: list[str] = []
    text = wikitext_to_text(ARTICLES["Iliad"], drop_sections=["references"], failed_sections=failed)
    assert "Fate, glory" not in text and "Only after the death of his friend Patroclus" in text
    assert failed == ["Themes"], failed
    # the reader counts what the parser cost (the rest of the page is kept)
    pages = [WikiPage("Iliad", ARTICLES["Iliad"], page_id=1)]
    path = write_wiki_dump(str(tmp_path / "enwiki-x-pages-articles-multistream.xml.bz2"), pages, "enwiki")
    stats = StageStats()
    docs = list(make_reader("wiki", {"kind": "wiki", "paths": [path]}).read(path, stats))
    assert len(docs) == 1 and "Patroclus" in docs[0].text
    assert stats.to_dict()["modified"].get("wikitext_section_unparsed") == 1, stats.to_dict()


@pytest.mark.parametrize("line,plain", [
    ("The ''Iliad'''s story", "The Iliad's story"),
    ("'''bold''' and ''italic'' and '''''both'''''", "bold and italic and both"),
    ("'''Pythagoras' theorem'''", "Pythagoras' theorem"),
    ("l''''amour''' x", "l'amour x"),
    ("no marks at all", "no marks at all"),
])
def test_strip_quotes_like_mediawiki(line, plain):
    assert strip_quotes(line) == plain


def test_a_heading_line_inside_a_comment_or_code_block_does_not_split_the_page():
    """Editors comment sections out (``<!-- == Old == ... -->``) and code samples hold ``== x ==`` lines: neither
    is a heading for MediaWiki, so neither splits a section (a split left ``-->`` and the hidden text behind)."""
    page = ("Lead text here.\n<!--\n== Trivia ==\nHidden trivia text.\n-->\n== History ==\nIt began in 1900.\n"
            "<syntaxhighlight lang=\"text\">\n== not a heading ==\n</syntaxhighlight>\nMore history.\n"
            "== References ==\n* A cited book.\n")
    text = wikitext_to_text(page, drop_sections=["references"], keep_code=True)
    assert "Hidden trivia" not in text and "Trivia" not in text and "-->" not in text
    assert "History" in text and "It began in 1900." in text and "More history." in text
    assert "== not a heading ==" in text  # kept as the code it is
    assert "A cited book" not in text
    unclosed = wikitext_to_text(page.replace("== References ==\n* A cited book.\n", "")
                                + "<!-- an unclosed comment\n== Tail ==\nhidden too")
    assert "More history." in unclosed and "Tail" not in unclosed and "hidden too" not in unclosed
    sample = wikitext_to_text("Lead.\n<nowiki><!--</nowiki> starts a comment.\n== Usage ==\nKept text.")
    assert "starts a comment." in sample and "Kept text." in sample  # inside nowiki: text, not a comment
    # a tag's name inside a closed comment opens no tag, so a later unclosed comment still hides the rest
    hidden = wikitext_to_text("Lead. <!-- use <pre> for code -->\nVisible text.\n<!-- unclosed note\n"
                              "== Hidden ==\nsecret draft\n<pre>x = 1</pre>\n")
    assert "Visible text." in hidden and "<!--" not in hidden and "Hidden" not in hidden and "secret" not in hidden
    assert _cut_unclosed_comment("Kept. <!--->") == "Kept. "  # its "-->" overlaps the "<!--": unclosed
