"""HTML payload -> main text: charset detection and the two supported extractors.

Charset order follows what browsers do: the HTTP ``Content-Type`` charset, then a ``<meta charset>`` /
``http-equiv`` declaration in the first bytes, then valid UTF-8, then ``charset-normalizer``'s guess.
Extraction uses ``resiliparse`` (compiled, fast; the default) or ``trafilatura`` (pure Python, about
17 pages/s/core, often cleaner on news pages). Both run fully offline.
"""

from __future__ import annotations

import codecs
import re
from typing import Callable

from pretrain.core.errors import ConfigError

EXTRACTORS = ("resiliparse", "trafilatura")
HTML_MIME_TYPES = frozenset({"text/html", "application/xhtml+xml", "application/xhtml", "text/xhtml"})

_CHARSET_RE = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:\-]+)""", re.IGNORECASE)
_HEADER_CHARSET_RE = re.compile(r"charset\s*=\s*[\"']?\s*([A-Za-z0-9_.:\-]+)", re.IGNORECASE)
_HTML_SNIFF_RE = re.compile(rb"^\s*(<!--.*?-->\s*)*(<!doctype\s+html|<html|<head|<body)", re.IGNORECASE | re.DOTALL)


def mime_type(content_type: str | None) -> str:
    """``'text/html; charset=UTF-8'`` -> ``'text/html'``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def looks_like_html(payload: bytes) -> bool:
    """Sniff an HTML start for payloads served without a usable Content-Type."""
    return bool(_HTML_SNIFF_RE.match(payload[:1024]))


def _codec(name: str | None) -> str | None:
    if not name:
        return None
    try:
        return codecs.lookup(name.strip().strip("\"'")).name
    except LookupError:
        return None


def detect_charset(payload: bytes, content_type: str | None = None) -> str:
    """The codec name to decode ``payload`` with (always one Python knows)."""
    if content_type:
        m = _HEADER_CHARSET_RE.search(content_type)
        codec = _codec(m.group(1) if m else None)
        if codec:
            return codec
    m = _CHARSET_RE.search(payload[:4096])
    codec = _codec(m.group(1).decode("ascii", "ignore") if m else None)
    if codec:
        return codec
    try:
        payload.decode("utf-8")
        return "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(payload[: 1 << 16]).best()
    return _codec(best.encoding if best else None) or "utf-8"


def _resiliparse(html: str, url: str | None) -> str:
    from resiliparse.extract.html2text import extract_plain_text
    from resiliparse.parse.html import HTMLTree

    tree = HTMLTree.parse(html)
    return extract_plain_text(tree, main_content=True, alt_texts=False, links=False, form_fields=False, noscript=False)


def _trafilatura(html: str, url: str | None) -> str:
    import trafilatura

    # deduplicate=False: trafilatura's dedup keeps an LRU cache across calls, which makes output depend on
    # document order; deduplication is a pipeline stage of its own.
    return trafilatura.extract(html, url=url, deduplicate=False, include_comments=False, include_tables=True) or ""


def get_extractor(name: str, source: str = "?") -> Callable[[str, str | None], str]:
    """The extraction function for ``options.extractor``; a clear ConfigError for anything else."""
    if name == "resiliparse":
        try:
            import resiliparse.extract.html2text  # noqa: F401
        except ImportError as e:  # pragma: no cover - resiliparse is a declared dependency
            raise ConfigError(f"source {source!r}: extractor 'resiliparse' needs the resiliparse package ({e})") from e
        return _resiliparse
    if name == "trafilatura":
        return _trafilatura
    raise ConfigError(f"source {source!r}: options.extractor must be one of {list(EXTRACTORS)}, got {name!r}")


def clean_extracted(text: str) -> str:
    """Turn ``&nbsp;`` layout spaces into spaces, strip trailing spaces per line and collapse runs of blank
    lines left by the extractor (finer Unicode normalisation is the ``normalize`` filter's job)."""
    text = text.replace("\xa0", " ").replace("\r\n", "\n").replace("\r", "\n")
    lines = [line.rstrip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if not line.strip():
            if out and out[-1] != "":
                out.append("")
            continue
        out.append(line)
    return "\n".join(out).strip()
