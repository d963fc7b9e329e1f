"""The fast wiki and books readers give exactly what the previous ones gave (``readers_reference.py``, kept
verbatim): the same documents, texts, ids, metadata and counts, on the bundled samples, the real-article wiki
fixture and seeded random inputs built to hit every shortcut (plain sections and headings that skip the parser,
the disambiguation pre-check, nested tags and links the tree walks remove, the licence-marker search, trailing
and Unicode white space, hyphenated line ends, contents lists)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from data_pipelines.samples.make_samples import WikiPage, write_wiki_dump
from data_pipelines.sources import gutenberg, make_reader, package_path, wikitext
from data_pipelines.stats import StageStats

from . import readers_reference as ref
from .fixtures import build_book
from .wiki_articles import ARTICLES

SAMPLE_WIKI = package_path("data_pipelines/samples/wiki/samplewiki-pages-articles.xml.bz2")
SAMPLE_BOOKS = [package_path(f"data_pipelines/samples/books/{name}") for name in ("pg90001.txt", "pg90002.txt")]
WIKI_OPTIONS = [{}, {"keep_math": True, "keep_code": True, "drop_sections": ["external links"]}, {"drop_sections": []}]


def read(reader, path: str) -> tuple[list[tuple], dict]:
    stats = StageStats()
    docs = [(d.id, d.text, d.source, d.metadata) for d in reader.read(path, stats)]
    return docs, stats.to_dict()


def assert_same_reader(kind: str, reference_cls: type, path: str, options: dict) -> list[tuple]:
    fast = read(make_reader(kind, {"kind": kind, "paths": [path], "options": options}), path)
    assert fast == read(reference_cls(kind, **{**reference_cls.COMMON_OPTIONS, **reference_cls.OPTIONS, **options}),
                        path)
    return fast[0]


# ----------------------------------------------------------------------------------------------- wiki

SNIPPETS = [
    "plain words here", "Achilles and Hector", " and ", ".", ", ", "''", "'''", "'''''", "''Iliad'''s", "l''''amour",
    "{{cite web |title=x}}", "{{Infobox\n| a = [[File:X.jpg|20px]]\n}}", "{{lang|grc|{{nested}}}}", "{{sfn|A|2011}}",
    "[[Homer]]", "[[epic poetry|epic poems]]", "[[File:A.jpg|thumb|A [[link]] in a caption <ref>r</ref>]]",
    "[[Image:B.svg|thumb|logo]]", "[[Category:Poems]]", "[[de:Ilias]]", "[[:fr:Iliade]]", "[[:Category:Shown]]",
    "<ref>{{cite book |t=y}}</ref>", '<ref name="w" />', "<ref name=a>West, p. 15.</ref>", "<references />",
    "<!-- a comment -->", "&amp;", "&nbsp;", "&#931;", "<math>a^2 + b^2 = c^2</math>", "<math>x_{{i}}</math>",
    "<syntaxhighlight lang=python>\ndef f(a):\n    return a * 2\n</syntaxhighlight>", "<source>print(1)</source>",
    "<ref><math>y</math></ref>", "<math><syntaxhighlight>z</syntaxhighlight></math>", "<b>bold</b>", "<i>it</i>",
    "<gallery>\nA.jpg|x\n</gallery>", "<chem>H2O</chem>", "<code>dumps</code>", "<table><tr><td>c</td></tr></table>",
    '{| class="wikitable"\n|-\n! A !! B\n|-\n| 1 || [[two]]\n|}', "https://example.org/page", "[https://e.org/x site]",
    "[https://e.org/bare]", "__NOTOC__", "__DISAMBIG__", "~~~~", "a: b", "x / y", "a - b", "x | y", "! bang", "} ]",
    "\u00a0nbsp", "caf\u00e9", "\u0130stanbul", "\u017fong s", "\u212aelvin", "Σ", "\t",
]
LINE_STARTS = ["", "", "", "* ", "# ", ": ", "; term : def", "----", "=not a heading", " ", "*", "== Inline ==", "{{"]
HEADINGS = ["== Synopsis ==", "=== Themes ===", "== ''Italic'' heading ==", "== See also ==", "== References ==",
            "==Notes==", "== External links ==", "==== Deep ====", "== Title with {{tpl}} ==", "== A <!--c--> B ==",
            "== [[Linked]] heading ==", "= Top =", "== Further reading ==", "== *Starred ==", "== &amp; ==",
            "===== Five ====="]
DISAMBIGUATION = ["{{Disambiguation}}", "{{ disambig | x }}", "{{set_index_article}}", "{{Place name disambiguation}}",
                  "{{Surname}}", "{{dab\n}}", "{{Hndis|name}}", "{{not a disambiguation page}}", "{{Geodis<!--c-->}}",
                  "the surname and given name", "{{Foo disambiguation}}", "{{Foo_disambiguation|x}}"]


def random_wikitext(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(1, 14)):
        if rng.random() < 0.15:
            lines.append(rng.choice(HEADINGS))
            continue
        if rng.random() < 0.1:
            lines.append("")
        parts = [rng.choice(SNIPPETS) for _ in range(rng.randint(0, 6))]
        if rng.random() < 0.5:  # a plain line: no markup at all, so the parser is skipped
            parts = [p for p in parts if not wikitext.needs_parse(p) and "''" not in p]
        lines.append(rng.choice(LINE_STARTS) + "".join(parts))
    if rng.random() < 0.2:
        lines.insert(rng.randint(0, len(lines)), rng.choice(DISAMBIGUATION))
    return "\n".join(lines)


def test_wiki_samples_and_real_articles_match_reference(tmp_path):
    pages = [WikiPage(title, text, page_id=i + 1) for i, (title, text) in enumerate(ARTICLES.items())]
    articles = write_wiki_dump(str(tmp_path / "enwiki-pages-articles.xml.bz2"), pages, "enwiki")
    for options in WIKI_OPTIONS:
        assert len(assert_same_reader("wiki", ref.ReferenceWikiReader, SAMPLE_WIKI, options)) == 2
        assert len(assert_same_reader("wiki", ref.ReferenceWikiReader, articles, options)) == len(ARTICLES)


def test_wiki_random_pages_match_reference(tmp_path):
    rng = random.Random(17)
    texts = [random_wikitext(rng) for _ in range(160)]
    pages = [WikiPage(f"Page {i}", text, page_id=i + 1) for i, text in enumerate(texts)]
    path = write_wiki_dump(str(tmp_path / "fuzzwiki-pages-articles.xml.bz2"), pages, "fuzzwiki")
    docs = assert_same_reader("wiki", ref.ReferenceWikiReader, path, {})
    assert 0 < len(docs) < len(texts)  # some pages are disambiguation pages
    for options in WIKI_OPTIONS[1:]:
        for text in texts[:60]:
            failed_fast: list[str] = []
            failed_ref: list[str] = []
            fast = wikitext.wikitext_to_text(text, failed_sections=failed_fast, **options)
            assert fast == ref.wikitext_to_text(text, failed_sections=failed_ref, **options), text
            assert failed_fast == failed_ref


def test_wiki_plain_text_shortcut_is_what_the_parser_gives():
    """A section or heading without markup characters skips the parser: random strings of everything else."""
    rng = random.Random(5)
    alphabet = list("ab xy.,:;/-=*#!|}]>~_'\"\t\n") + ["\n*", "\n=", "\n:", "\n----", "http://e.org/", "\u00a0",
                                                       "\u2028", "\x85", "\u0130", "\u212a", "''", "'''"]
    media, cats = set(wikitext.MEDIA_PREFIXES), set(wikitext.CATEGORY_PREFIXES)
    plain = 0
    for _ in range(400):
        body = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        plain += not wikitext.needs_parse(body)
        blocks_fast: list[str] = []
        blocks_ref: list[str] = []
        fast = wikitext._section_text(body, media, cats, frozenset(), blocks_fast)
        assert fast == ref._section_text(body, media, cats, frozenset(), blocks_ref), repr(body)
        line = body.split("\n")[0]
        assert wikitext._plain_title(line) == ref._plain_title(line), repr(line)
    assert plain > 50  # the shortcut was exercised


def test_disambiguation_precheck_never_misses_one():
    templates = wikitext.DEFAULT_DISAMBIGUATION_TEMPLATES
    for text in DISAMBIGUATION + [random_wikitext(random.Random(i)) for i in range(60)]:
        if ref.is_disambiguation(wikitext.parse(text), templates):
            assert wikitext.may_be_disambiguation(text, templates), text
    assert not wikitext.may_be_disambiguation("{{Infobox}} the surname [[dab]]", templates)
    assert wikitext.may_be_disambiguation("{{Bezirk}}", ["Bégriffsklärung"])  # non-ASCII names: always parsed


# ---------------------------------------------------------------------------------------------- books

PROSE = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
         "foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, "
         "it was the season of Darkness, a well-known and long-standing story of non- existing things -- or -"
         " a- --- x- caf\u00e9- \u00e9- 1- \u03a9\u03bc\u03ad\u03b3\u03b1 \u6587\u5b57- \U0001d4b3-"
         " GUTENBERG gUtEnBeRg").split()  # words ending in dashes: the hyphen rule of rejoined lines; other
# alphabets (the compiled passes read every str kind) and the footer's word in mixed case mid-book
PROSE_ASCII = [w for w in PROSE if w.isascii()]
HEADERS = [
    "*** START OF THE PROJECT GUTENBERG EBOOK {t} ***", "*** START OF THIS PROJECT GUTENBERG EBOOK {t} ***",
    "  ***START OF THE COPYRIGHTED PROJECT GUTENBERG EBOOK***", "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*",
    "***START***OF THE PROJECT GUTENBERG EBOOK", "*** start of the project gutenberg ebook {t} ***",
    "* * *", "*** START OF THE ſmall PROJECT", "\t*** START OF THE PROJECT GUTENBERG EBOOK {t}",
]
FOOTERS = [
    "*** END OF THE PROJECT GUTENBERG EBOOK {t} ***", "End of the Project Gutenberg EBook of {t}, by X",
    "End of Project Gutenberg's {t}", "   end of this project gutenberg etext", "*** END OF THIS PROJECT GUTENBERG",
    "The end of the project gutenberg story", "End of the Project GUTENBERG eBook #4242",
]


def random_book(rng: random.Random) -> str:
    title = rng.choice(["The Iliad", "Caf\u00e9 Stories", "\u0130stanbul Days", "Verse"])
    head = [f"The Project Gutenberg eBook of {title}", "", f"Title: {title}", "Author:  Homer  ", "Language: English",
            f"Release Date: May 1, 2004 [EBook #{rng.randint(1, 99999)}]" if rng.random() < 0.7 else "Release: soon",
            "Character set encoding: ISO-8859-1", ""]
    head += ["Some licence line mentioning Project Gutenberg."] * rng.randint(0, 3)
    if rng.random() < 0.1:
        head += ["filler"] * 800  # a marker beyond the first 800 lines is not looked for
    head.append(rng.choice(HEADERS).format(t=title.upper()))
    if rng.random() < 0.3:
        head.append(rng.choice(HEADERS).format(t=title.upper()))
    body: list[str] = []
    if rng.random() < 0.5:
        body += ["", "Produced by Someone and the Online", "Distributed Proofreading Team", ""]
    chapters = [f"CHAPTER {n}. {rng.choice(PROSE).upper()}" for n in range(1, rng.randint(2, 5))]
    if rng.random() < 0.6:
        body += ["", rng.choice(["CONTENTS", "Table of Contents:", "  contents."]), ""] + chapters + [""]
    for chapter in chapters:
        body += ["", chapter, ""]
        for _ in range(rng.randint(1, 6)):
            kind = rng.random()
            width = rng.choice([40, 60, 72])
            vocabulary = PROSE if rng.random() < 0.3 else PROSE_ASCII
            words = [rng.choice(vocabulary) for _ in range(rng.randint(3, 120))]
            lines, cur = [], ""
            for w in words:
                if cur and len(cur) + 1 + len(w) > (width if kind < 0.7 else rng.randint(5, width)):
                    lines.append(cur)
                    cur = w
                else:
                    cur = f"{cur} {w}" if cur else w
            lines.append(cur)
            lines = [rng.choice(["", "  ", "\t", "\u3000"]) + line
                     + rng.choice(["", "", " ", "\t", "\u00a0", "\x0c", "\x1c", "\u2028"]) for line in lines]
            if rng.random() < 0.2:
                lines[0] = lines[0] + " Gutenberg-" if rng.random() < 0.5 else "*" + lines[0]
            body += lines + [rng.choice(["", " ", "\t", "\u2003", ""])]
    tail = [""] * rng.randint(0, 3)
    if rng.random() < 0.8:
        tail += [rng.choice(FOOTERS).format(t=title.upper()), "", "Ebook #31337 in the footer", "licence " * 5]
    text = "\n".join(head + body + tail)
    if rng.random() < 0.15:
        text = text.replace("\n", "\r\n")
    if rng.random() < 0.1:
        text = "\ufeff" + text
    return text


@pytest.fixture(params=["compiled", "python"])
def book_path(request, monkeypatch) -> str:
    """Each books test runs on the compiled passes (data_pipelines/_native.c, built by the install) and on the
    Python path an install without a C compiler takes."""
    if request.param == "compiled":
        assert gutenberg._native is not None, "data_pipelines._native is not built: pip install -e . needs gcc"
    else:
        monkeypatch.setattr(gutenberg, "_native", None)
    return request.param


def test_books_random_texts_match_reference(book_path):
    rng = random.Random(90001)
    gutenberg_books = 0
    for i in range(150):
        text = random_book(rng)
        for rejoin_lines in (True, False):
            fast = gutenberg.clean_book(text, rejoin_lines=rejoin_lines)
            slow = ref.clean_book(text, rejoin_lines=rejoin_lines)
            assert (fast.text, fast.gutenberg, fast.header, fast.book_id) == (
                slow.text, slow.gutenberg, slow.header, slow.book_id), (i, text)
        gutenberg_books += fast.gutenberg
        split = gutenberg.split_gutenberg(text.replace("\r\n", "\n"))
        old = ref.split_gutenberg(text.replace("\r\n", "\n"))
        assert (split.text, split.gutenberg, split.header, split.book_id) == (
            old.text, old.gutenberg, old.header, old.book_id)
    assert 50 < gutenberg_books < 150  # both kinds of text were tried


def test_books_header_search_limit_matches_reference(book_path):
    for before in (798, 799, 800):  # the marker on the 800th line is found, on the 801st not
        text = "x\n" * before + "*** START OF THE PROJECT GUTENBERG EBOOK X ***\nThe body.\n"
        fast, slow = gutenberg.clean_book(text), ref.clean_book(text)
        assert (fast.text, fast.gutenberg) == (slow.text, slow.gutenberg) and fast.gutenberg == (before < 800)


def test_books_samples_match_reference(tmp_path, book_path):
    from data_pipelines.bench import book_sized

    long_books = book_sized(Path(package_path("data_pipelines/samples/books")), tmp_path / "long")  # the bench's
    books = SAMPLE_BOOKS + [build_book(str(tmp_path / f"{style}.txt"), style) for style in ("modern", "old")]
    for path in books + long_books:
        for options in ({}, {"rejoin_lines": False}):
            assert len(assert_same_reader("books", ref.ReferenceBooksReader, path, options)) == 1
    for short, long in zip(SAMPLE_BOOKS, long_books):  # the whole body repeated, the header and footer as they were
        (_, text, _, meta), = read(make_reader("books", {"kind": "books", "paths": [short]}), short)[0]
        (_, long_text, _, long_meta), = read(make_reader("books", {"kind": "books", "paths": [long]}), long)[0]
        assert long_meta == {**meta, "file": long_meta["file"]} and len(long_text) > 30 * len(text)
        assert long_text.count(text.split("\n\n")[-1]) > 30


ALPHABET = ["g", "G", "u", "U", "t", "e", "N", "b", "R", "gutenberg", "GuTeNbErG", "\n", " ", "\t", "\u00a0", "\x1c",
            "\u2028", "\u3000", "-", "\u00e9", "\u00ff", "\u0130", "\u03a9", "\ud800", "\U0001d4b3", "x"]
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def test_compiled_book_passes_match_python():
    """find_folded, book_lines and utf8_len (data_pipelines/_native.c) against what they stand for, on random
    strings of every str kind (and the 8-byte blocks the 1-byte scans take); book_join through clean_book above."""
    from data_pipelines import _native

    rng = random.Random(17)
    for i in range(3000):
        letters = ALPHABET[:rng.randint(4, len(ALPHABET))]
        text = "".join(rng.choice(letters) for _ in range(rng.randint(0, 60)))
        start = rng.randint(-2, len(text) + 2)
        needle = rng.choice([b"gutenberg", b"g", b"ut", b"-x", b""])
        expected = text.translate(_ASCII_LOWER).find(needle.decode(), max(start, 0))
        assert _native.find_folded(text, needle, start) == expected, (text, needle, start)
        a = rng.randint(0, len(text))
        b = rng.randint(a, len(text))
        offsets, lengths = (np.frombuffer(x, dtype=np.int64) for x in _native.book_lines(text, a, b))
        lines = text[a:b].split("\n")
        assert [text[o:o + n] for o, n in zip(offsets.tolist(), lengths.tolist())] == [x.rstrip() for x in lines]
        assert offsets[0] == a and len(offsets) == len(lines)
        assert _native.utf8_len(text) == len(text.encode("utf-8", "surrogatepass")), i


def test_compiled_book_passes_reject_bad_input():
    from data_pipelines import _native

    ints = np.zeros(2, dtype=np.int64)
    with pytest.raises(ValueError, match="lower-case ASCII"):
        _native.find_folded("Gutenberg", b"Gutenberg", 0)
    with pytest.raises(ValueError, match="not a range"):
        _native.book_lines("abc", 2, 1)
    with pytest.raises(ValueError, match="not a range"):
        _native.book_lines("abc", 0, 4)
    offsets, lengths = np.array([0, 4], dtype=np.int64), np.array([3, 3], dtype=np.int64)  # "abc\ndef"
    one = np.ones(1, dtype=np.uint8)
    assert _native.book_join("abc\ndef", offsets, lengths, np.array([0]), np.array([2]), one) == "abc def"
    with pytest.raises(ValueError, match="paragraph 0 .* is not within the 2 lines"):
        _native.book_join("abc\ndef", offsets, lengths, np.array([1]), np.array([2]), one)
    with pytest.raises(ValueError, match="line 1 is not within the text"):
        _native.book_join("abc\nde", offsets, lengths, np.array([0]), np.array([2]), one)
    with pytest.raises(ValueError, match="differ in length"):
        _native.book_join("abc\ndef", offsets, lengths[:1], np.array([0]), np.array([2]), one)
    with pytest.raises(ValueError, match="wrapped: items of 8 bytes, expected 1"):
        _native.book_join("abc\ndef", offsets, lengths, np.array([0]), np.array([2]), ints[:1])
    with pytest.raises(TypeError, match="expected a str"):
        _native.utf8_len(b"abc")


def test_declared_charset_matches_reference():
    from data_pipelines.sources import books

    rng = random.Random(3)
    pieces = [b"Title: A Book", b"Title: Character set encoding: utf-8", b"Character set encoding: ISO-8859-1",
              b"  character SET encoding : latin-1  ", b"Character set encoding: no-such-codec", b"Chara\xe7cter set "
              b"encoding: cp1252", b"Character set encoding:", b"x" * 3000, b"caf\xe9", b"", b"\x0cCharacter set "
              b"encoding: ascii", b"Character set encoding: utf-8"]
    breaks = [b"\n", b"\r\n", b"\r", b"\x0b", b"\x1c"]
    for _ in range(300):
        data = b"".join(rng.choice(pieces) + rng.choice(breaks) for _ in range(rng.randint(0, 8)))
        assert books._declared_codec(data) == ref._declared_codec(data), data


@pytest.mark.parametrize("max_bytes", [5, 7062, 7061, 300_000])
def test_read_capped_at_the_limit(tmp_path, max_bytes):
    """The first read is bounded (no 64 MiB buffer per book); the limit is the same as before."""
    import io

    from data_pipelines.sources.base import read_capped

    data = bytes(range(256)) * 1200  # 307,200 bytes: more than the first read
    for size in (0, 5, 7062, len(data)):
        got = read_capped(io.BufferedReader(io.BytesIO(data[:size])), max_bytes)
        assert got == (data[:size] if size <= max_bytes else None)
