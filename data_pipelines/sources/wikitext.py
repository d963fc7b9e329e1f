"""MediaWiki wikitext -> plain text with ``mwparserfromhell``.

Removed: templates (infoboxes, citations, navboxes), ``<ref>`` and other non-prose tags, tables,
File:/Image:/Media: links, Category: links, interlanguage links, comments, behaviour switches
(``__NOTOC__``), bold/italic marks, and whole sections that are not prose (``drop_sections``: References,
External links, See also, Notes, Further reading... with their subsections). Kept as text: headings
(their title on a line of its own), paragraphs, list items (one per line), the visible text of links and
formatting; math (``<math>``, ``<chem>``) and code (``<syntaxhighlight>``, ``<source>``) blocks only with
``keep_math`` / ``keep_code``. The parser is the field's standard one; only the choice of what to remove
and the final clean-up are ours.

Robustness on real articles: mwparserfromhell's style-tag parsing (``''``/``'''``) gives up on constructs
such as ``''Iliad'''s`` and returns the rest of the page as plain text, so templates, ``<ref>``s and tables
after it survive as raw wikitext. Pages are therefore parsed with ``skip_style_tags=True`` and the quote
marks removed afterwards by MediaWiki's own per-line rule (:func:`strip_quotes`). Each section is parsed
on its own, so a section the parser cannot handle costs that section, not the page.

Speed (the reader's floor is one mwparserfromhell parse of every page, ``python -m data_pipelines.bench``): the
page is parsed once, section by section; nothing else is parsed unless it can hold markup. A page is parsed
whole (for its disambiguation templates) only when its text can name one (:func:`may_be_disambiguation`); a
section or heading with no markup character (:func:`needs_parse`) is plain text, which is what the parser would
return for it; and the nodes are removed or replaced in one walk over the tree each (:func:`_edit_tree`, by
:func:`_remove_nodes`, :func:`_drop_tags`, :func:`_drop_links`) where ``Wikicode.remove`` would search the whole
tree for every node.
The output is the same as removing them one by one (``tests/pipeline/test_readers_fast.py`` checks it against
the previous implementation).
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Iterable

import mwparserfromhell
from mwparserfromhell.nodes import Comment, Heading, Tag, Template, Text, Wikilink

log = logging.getLogger(__name__)

# tags whose content is not running prose
DROP_TAGS = frozenset({
    "ref", "references", "table", "gallery", "math", "chem", "score", "timeline", "graph", "imagemap",
    "syntaxhighlight", "source", "templatedata", "mapframe", "maplink", "inputbox", "categorytree", "noinclude",
    "indicator", "hiero", "ce",
})
MATH_TAGS = frozenset({"math", "chem", "ce"})
CODE_TAGS = frozenset({"syntaxhighlight", "source"})
MEDIA_PREFIXES = frozenset({"file", "image", "media"})
CATEGORY_PREFIXES = frozenset({"category"})
# Sections that are lists of titles and links, not prose (English Wikipedia's standard appendices).
DEFAULT_DROP_SECTIONS = (
    "references", "external links", "see also", "notes", "further reading", "bibliography", "sources",
    "citations", "footnotes", "notes and references", "references and notes", "works cited",
)
_INTERLANG_RE = re.compile(r"^:?[a-z]{2,3}(-[a-z0-9]{1,8})*$")
_BEHAVIOUR_SWITCH_RE = re.compile(r"__[A-Z]+__")
_HEADING_RE = re.compile(r"^(={1,6})[ \t]*(.*?)[ \t]*\1[ \t]*$", re.MULTILINE)
_VERBATIM_TAGS = (r"<(pre|nowiki|syntaxhighlight|source|math|chem|ce|score|timeline|graph|mapframe)\b[^>]*(?<!/)>"
                  r".*?</\1\s*>")
_VERBATIM_RE = re.compile(r"<!--.*?(?:-->|\Z)|" + _VERBATIM_TAGS, re.DOTALL | re.IGNORECASE)
_QUOTE_RUN = re.compile(r"'{2,}")
_CODE_SLOT = re.compile("\ue000(\\d+)\ue001")
_MARKUP_CHAR = re.compile(r"[{\[<&]")  # templates, links, tags/comments, entities
_LINE_MARKUP = re.compile(r"\n(?:[=*#:;]|----)")  # headings, list items, rules: markup only at a line start
_LINE_MARKS = ("=", "*", "#", ":", ";", "----")
_WS_RUN = re.compile(r"[ \t]+")
_EMPTY_LINES = frozenset({"", "*", "#", ":", ";"})
DEFAULT_DISAMBIGUATION_TEMPLATES = (
    "disambiguation", "disambig", "dab", "disamb", "hndis", "geodis", "numberdis", "letter disambiguation",
    "school disambiguation", "place name disambiguation", "species latin name disambiguation",
    "mathematical disambiguation", "set index article", "surname", "given name",
)


def _link_prefix(title: str) -> str:
    head, sep, _ = title.strip().lstrip(":").partition(":")
    return head.strip().lower() if sep else ""


def needs_parse(text: str) -> bool:
    """False when mwparserfromhell (``skip_style_tags``) would return ``text`` as plain text nodes only: no
    ``{``, ``[``, ``<`` or ``&`` anywhere, and no heading, list or rule mark at the start of a line. Bare URLs
    become external links whose stripped text is the URL itself, so they need no parse either."""
    return bool(_MARKUP_CHAR.search(text) or text.startswith(_LINE_MARKS) or _LINE_MARKUP.search(text))


@functools.lru_cache(maxsize=16)
def _disambiguation_names(templates: tuple[str, ...]) -> re.Pattern | None:
    names = sorted({t.strip().lower() for t in templates})
    if not all(n.isascii() for n in names):
        return None  # lower-casing a non-ASCII name can depend on its neighbours: no pre-check
    alts = "|".join(re.escape(n).replace("\\ ", "[ _]") for n in names) or "(?!)"
    return re.compile(r"\{\{\s*(?:" + alts + r")\s*(?:\||\}\})")


def may_be_disambiguation(text: str, templates: Iterable[str]) -> bool:
    """False when no top-level template of ``text`` can make :func:`is_disambiguation` true, decided without
    parsing: such a template's stripped, lower-cased name (``_`` read as a space) is one of ``templates`` right
    after ``{{`` and before ``|`` or ``}}``, or ends in `` disambiguation``; either way it is in the lower-cased
    text. True means "parse and check" (``__DISAMBIG__`` included)."""
    if "__DISAMBIG__" in text:
        return True
    if "{{" not in text:
        return False
    pattern = _disambiguation_names(tuple(templates))
    if pattern is None:
        return True
    low = text.lower()
    return bool(pattern.search(low)) or "disambiguation" in low


def is_disambiguation(code: mwparserfromhell.wikicode.Wikicode, templates: Iterable[str]) -> bool:
    """True for a page carrying a disambiguation template (or ``__DISAMBIG__``)."""
    names = {t.strip().lower() for t in templates}
    if "__DISAMBIG__" in str(code):
        return True
    for tpl in code.filter_templates(recursive=False):
        name = str(tpl.name).strip().lower().replace("_", " ")
        if name in names or name.endswith(" disambiguation"):
            return True
    return False


def parse(text: str) -> mwparserfromhell.wikicode.Wikicode:
    """mwparserfromhell with the settings that survive real articles (see the module docstring)."""
    return mwparserfromhell.parse(text, skip_style_tags=True)


def _remove(code: mwparserfromhell.wikicode.Wikicode, node: object) -> None:
    try:
        code.remove(node)
    except ValueError:  # already gone with a removed parent
        pass


def wikitext_to_text(
    code: str | mwparserfromhell.wikicode.Wikicode,
    media_prefixes: Iterable[str] = MEDIA_PREFIXES,
    category_prefixes: Iterable[str] = CATEGORY_PREFIXES,
    *,
    drop_sections: Iterable[str] = (),
    keep_math: bool = False,
    keep_code: bool = False,
    failed_sections: list[str] | None = None,
) -> str:
    """Plain text of a page's wikitext (see the module docstring for what is kept).

    ``drop_sections``: heading titles (case-insensitive) whose section, subsections included, is left out.
    ``failed_sections``: gets the title of every section the parser rejected (left out of the text), so that the
    caller can count what was lost.
    """
    text = _cut_unclosed_comment(str(code))
    media = {p.lower() for p in media_prefixes}
    cats = {p.lower() for p in category_prefixes}
    drop = {t.strip().lower() for t in drop_sections}
    kept_tags = (MATH_TAGS if keep_math else frozenset()) | (CODE_TAGS if keep_code else frozenset())
    parts: list[str] = []
    code_blocks: list[str] = []  # kept code, put back after the whitespace clean-up (it keeps its indentation)
    dropping_below: int | None = None  # level of a dropped section's heading: deeper headings go with it
    for level, title, body in split_sections(text):
        if dropping_below is not None and level > dropping_below:
            continue
        dropping_below = None
        plain_title = _plain_title(title) if level else ""
        if level and plain_title.lower() in drop:
            dropping_below = level
            continue
        if plain_title:
            parts.append("\n" + plain_title + "\n")
        try:
            parts.append(_section_text(body, media, cats, kept_tags, code_blocks))
        except Exception as exc:  # noqa: BLE001 - the parser failing on one section must not cost the page
            log.debug("wikitext section %r left out: %s", title, exc)
            if failed_sections is not None:
                failed_sections.append(plain_title or "(lead)")
    text = _clean("\n".join(parts))
    if code_blocks:
        text = _CODE_SLOT.sub(lambda m: code_blocks[int(m.group(1))], text)
    return text


def _cut_unclosed_comment(text: str) -> str:
    """The text before a ``<!--`` that is never closed: MediaWiki hides the rest of the page behind it, where
    mwparserfromhell would give it back as text. One inside a verbatim tag (``<nowiki><!--</nowiki>``, an HTML
    sample in ``<syntaxhighlight>``) is text, not a comment, and a tag's name inside a closed comment opens no
    tag: comments and tags are found in one scan from the left, as MediaWiki reads them."""
    if "<!--" not in text:
        return text
    for m in _VERBATIM_RE.finditer(text):
        if m.group().startswith("<!--") and "-->" not in m.group()[4:]:  # ran to the end (``<!--->`` too)
            return text[: m.start()]
    return text


def _verbatim_spans(text: str) -> list[tuple[int, int]]:
    """Spans where a ``== line ==`` is not a heading for MediaWiki: comments and the extension tags whose content
    is not parsed (``<pre>``, ``<nowiki>``, ``<syntaxhighlight>``, ``<math>``...; without its closing tag an
    opening tag is plain text). An unclosed comment is cut off before (:func:`_cut_unclosed_comment`)."""
    if "<" not in text:
        return []
    return [m.span() for m in _VERBATIM_RE.finditer(text)]


def split_sections(text: str) -> list[tuple[int, str, str]]:
    """``(level, heading title, body wikitext)`` per section; the lead section has level 0 and no title. A heading
    line inside a comment or a verbatim block (a section commented out, a code sample) does not split."""
    out: list[tuple[int, str, str]] = []
    pos, level, title = 0, 0, ""
    verbatim = _verbatim_spans(text)
    for m in _HEADING_RE.finditer(text):
        if verbatim and any(a < m.start() < b for a, b in verbatim):
            continue
        out.append((level, title, text[pos : m.start()]))
        level, title, pos = len(m.group(1)), m.group(2), m.end()
    out.append((level, title, text[pos:]))
    return out


def _plain_title(title: str) -> str:
    if not needs_parse(title):  # one line of plain text: what strip_code would return
        return strip_quotes(title).strip()
    try:
        code = parse(title)
    except Exception:  # noqa: BLE001 - a heading the parser rejects stays as written
        return strip_quotes(title).strip()
    for node in code.filter(recursive=True, forcetype=(Template, Comment)):
        _remove(code, node)
    return strip_quotes(code.strip_code()).strip()


def _section_text(
    body: str, media: set[str], cats: set[str], kept_tags: frozenset[str], code_blocks: list[str]
) -> str:
    if not needs_parse(body):  # only text nodes: strip_code(normalize=True, collapse=True) of them
        text = _collapse(body.strip("\n"))
    else:
        code = parse(body)
        _remove_nodes(code, (Template, Comment))
        _drop_tags(code, kept_tags, code_blocks)
        _drop_links(code, media, cats)
        for heading in code.filter(recursive=False, forcetype=Heading):  # a heading the line pattern missed
            code.replace(heading, "\n" + heading.title.strip_code().strip() + "\n")
        text = code.strip_code(normalize=True, collapse=True)
    if "''" not in text:
        return text
    return "\n".join(strip_quotes(line) for line in text.split("\n"))


def _collapse(text: str) -> str:
    while "\n\n\n" in text:  # as strip_code(collapse=True)
        text = text.replace("\n\n\n", "\n\n")
    return text


# The three edits below walk the tree in the order of ``Wikicode.filter(recursive=True)`` (a node, then the nodes
# of each of its children) and change it where ``filter`` + ``remove``/``replace`` node by node would: a node
# removed or replaced takes its subtree with it (those nodes would no longer be found), and nodes inserted by a
# replacement are not visited (they were not in the filtered list).


def _edit_tree(code: mwparserfromhell.wikicode.Wikicode, edit) -> None:
    """Walk ``code`` as above. ``edit(code, i, node)`` may change ``code.nodes`` at ``i`` and return the index to go
    on from, or return ``None`` to leave the node and walk its children."""
    nodes = code.nodes
    i = 0
    while i < len(nodes):
        node = nodes[i]
        if type(node) is not Text:
            after = edit(code, i, node)
            if after is not None:
                i = after
                continue
            for child in node.__children__():
                _edit_tree(child, edit)
        i += 1


def _remove_nodes(code: mwparserfromhell.wikicode.Wikicode, kinds: tuple[type, ...]) -> None:
    """Every node of ``kinds`` removed, with what it contains."""

    def edit(code, i, node):
        if isinstance(node, kinds):
            code.nodes.pop(i)
            return i
        return None

    _edit_tree(code, edit)


def _drop_tags(
    code: mwparserfromhell.wikicode.Wikicode, kept_tags: frozenset[str], code_blocks: list[str]
) -> None:
    """Tags in ``kept_tags`` replaced by their source text (code parked in ``code_blocks``), ``DROP_TAGS`` removed."""

    def edit(code, i, node):
        if not isinstance(node, Tag):
            return None
        name = str(node.tag).strip().lower()
        if name in kept_tags:  # math is invisible to strip_code, code is kept as written: its source text
            content = str(node.contents).strip("\n")
            if name in CODE_TAGS:
                code_blocks.append(content)
                content = f"\ue000{len(code_blocks) - 1}\ue001"
            before = len(code.nodes)
            code.nodes.pop(i)
            code.insert(i, "\n" + content + "\n")  # parsed, as Wikicode.replace does
            return i + len(code.nodes) - before + 1
        if name in DROP_TAGS:
            code.nodes.pop(i)
            return i
        return None

    _edit_tree(code, edit)


def _drop_links(code: mwparserfromhell.wikicode.Wikicode, media: set[str], cats: set[str]) -> None:
    """File/Image/Media, Category and interlanguage links removed."""

    def edit(code, i, node):
        if not isinstance(node, Wikilink):
            return None
        title = str(node.title)
        prefix = _link_prefix(title)
        # File/Category links, and [[de:Python]]: an interlanguage link, not text
        if prefix in media or prefix in cats or (
                prefix and not title.strip().startswith(":") and _INTERLANG_RE.match(prefix)):
            code.nodes.pop(i)
            return i
        return None

    _edit_tree(code, edit)


def strip_quotes(line: str) -> str:
    """Remove the bold/italic apostrophe runs of one line the way MediaWiki renders them.

    Two apostrophes are italic, three bold, five both; four are an apostrophe then bold, and more than
    five keep the extra ones as apostrophes. When a line has an odd number of both italic and bold marks,
    one bold mark is really an apostrophe followed by italic (``''Iliad'''s``): MediaWiki takes the first
    one after a one-letter word, else after a longer word, else after a space; so does this.
    """
    if "''" not in line:
        return line
    runs = list(_QUOTE_RUN.finditer(line))
    kinds = [3 if len(m.group()) == 4 else 5 if len(m.group()) > 5 else len(m.group()) for m in runs]
    italics = sum(1 for k in kinds if k in (2, 5))
    bolds = sum(1 for k in kinds if k in (3, 5))
    apostrophe_at = None
    if italics % 2 and bolds % 2:
        single = word = space = None
        for i, (m, k) in enumerate(zip(runs, kinds)):
            if k != 3:
                continue
            before = line[m.start() - 1] if m.start() >= 1 else " "
            before2 = line[m.start() - 2] if m.start() >= 2 else " "
            if before == " ":
                space = i if space is None else space
            elif before2 == " ":
                single = i if single is None else single
            else:
                word = i if word is None else word
        apostrophe_at = next((i for i in (single, word, space) if i is not None), None)
    out, pos = [], 0
    for i, m in enumerate(runs):
        n = len(m.group())
        out.append(line[pos : m.start()])
        if n == 4 or i == apostrophe_at:
            out.append("'")
        elif n > 5:
            out.append("'" * (n - 5))
        pos = m.end()
    out.append(line[pos:])
    return "".join(out)


def _clean(text: str) -> str:
    text = _WS_RUN.sub(" ", _BEHAVIOUR_SWITCH_RE.sub("", text))
    out: list[str] = []
    for line in map(str.strip, text.split("\n")):
        if line in _EMPTY_LINES:  # empty, or a list marker whose item was all template
            if out and out[-1] != "":
                out.append("")
            continue
        out.append(line)
    return "\n".join(out).strip()
