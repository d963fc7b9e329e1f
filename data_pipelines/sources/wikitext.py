"""MediaWiki wikitext -> plain text with ``mwparserfromhell``.

Removed: templates (infoboxes, citations, navboxes), ``<ref>`` and other non-prose tags, tables,
File:/Image:/Media: links, Category: links, interlanguage links, comments, behaviour switches
(``__NOTOC__``). Kept as text: headings (their title on a line of its own), paragraphs, list items (one
per line), the visible text of links and formatting. The parser is the field's standard one; only the
choice of what to remove and the final whitespace clean-up are ours.
"""

from __future__ import annotations

import re
from typing import Iterable

import mwparserfromhell
from mwparserfromhell.nodes import Comment, Heading, Template

# tags whose content is not running prose
DROP_TAGS = frozenset({
    "ref", "references", "table", "gallery", "math", "chem", "score", "timeline", "graph", "imagemap",
    "syntaxhighlight", "source", "templatedata", "mapframe", "maplink", "inputbox", "categorytree", "noinclude",
    "indicator", "hiero", "ce",
})
MEDIA_PREFIXES = frozenset({"file", "image", "media"})
CATEGORY_PREFIXES = frozenset({"category"})
_INTERLANG_RE = re.compile(r"^:?[a-z]{2,3}(-[a-z0-9]{1,8})*$")
_BEHAVIOUR_SWITCH_RE = re.compile(r"__[A-Z]+__")
DEFAULT_DISAMBIGUATION_TEMPLATES = (
    "disambiguation", "disambig", "dab", "disamb", "hndis", "geodis", "numberdis", "letter disambiguation",
    "school disambiguation", "place name disambiguation", "species latin name disambiguation",
    "mathematical disambiguation", "set index article", "surname", "given name",
)


def _link_prefix(title: str) -> str:
    head, sep, _ = title.strip().lstrip(":").partition(":")
    return head.strip().lower() if sep else ""


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


def _remove(code: mwparserfromhell.wikicode.Wikicode, node: object) -> None:
    try:
        code.remove(node)
    except ValueError:  # already gone with a removed parent
        pass


def wikitext_to_text(
    code: str | mwparserfromhell.wikicode.Wikicode,
    media_prefixes: Iterable[str] = MEDIA_PREFIXES,
    category_prefixes: Iterable[str] = CATEGORY_PREFIXES,
) -> str:
    """Plain text of a page's wikitext (see the module docstring for what is kept)."""
    if isinstance(code, str):
        code = mwparserfromhell.parse(code)
    media = {p.lower() for p in media_prefixes}
    cats = {p.lower() for p in category_prefixes}
    for node in code.filter(recursive=True, forcetype=(Template, Comment)):
        _remove(code, node)
    for tag in code.filter_tags(recursive=True):
        if str(tag.tag).strip().lower() in DROP_TAGS:
            _remove(code, tag)
    for link in code.filter_wikilinks(recursive=True):
        title = str(link.title)
        prefix = _link_prefix(title)
        if prefix in media or prefix in cats:
            _remove(code, link)
        elif prefix and not title.strip().startswith(":") and _INTERLANG_RE.match(prefix):
            _remove(code, link)  # [[de:Python]]: an interlanguage link, not text
    for heading in code.filter(recursive=False, forcetype=Heading):
        # keep the heading as a line of its own text
        code.replace(heading, "\n" + heading.title.strip_code().strip() + "\n")
    text = code.strip_code(normalize=True, collapse=True)
    return _clean(text)


def _clean(text: str) -> str:
    text = _BEHAVIOUR_SWITCH_RE.sub("", text)
    out: list[str] = []
    for line in text.split("\n"):
        line = re.sub(r"[ \t]+", " ", line).strip()
        if line in {"", "*", "#", ":", ";"}:  # empty, or a list marker whose item was all template
            if out and out[-1] != "":
                out.append("")
            continue
        out.append(line)
    return "\n".join(out).strip()


