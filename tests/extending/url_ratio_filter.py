"""Example filter block (docs/extending.md): drop documents that are mostly URLs (link farms, spam directories).

In the product this file would be ``data_pipelines/filters/url_ratio.py`` and its registry entry ``UrlRatio,``
in ``BLOCK_CLASSES`` (``data_pipelines/filters/registry.py``); then ``{name: url_ratio, max_ratio: 0.3}``
works in any filter list of ``conf/filters/*.yaml`` or on the command line.
"""

from __future__ import annotations

import re

from data_pipelines.document import Document
from data_pipelines.filters.base import DocumentFilter, add_extra, invalid
from data_pipelines.stats import StageStats

URL = re.compile(r"(?:https?://|www\.)\S+")


class UrlRatio(DocumentFilter):
    """Drops ``url_ratio_too_high``: more than ``max_ratio`` of the words are URLs. With ``remove_urls``, the
    URLs of the documents kept are cut out (``modified['url_ratio_removed']``, ``extra['url_ratio_urls']``)."""

    name = "url_ratio"

    def __init__(self, *, max_ratio: float = 0.2, remove_urls: bool = False):
        if not 0.0 <= max_ratio <= 1.0:
            raise invalid("max_ratio", max_ratio, "a fraction between 0 and 1")
        self.max_ratio = max_ratio
        self.remove_urls = remove_urls

    def apply(self, doc: Document, stats: StageStats) -> str | None:
        urls = URL.findall(doc.text)
        if len(urls) / len(doc.text.split()) > self.max_ratio:  # never empty: the base class dropped those
            return "url_ratio_too_high"
        if self.remove_urls and urls:
            doc.text = URL.sub("", doc.text)
            stats.modify("url_ratio_removed")
            add_extra(stats, "url_ratio_urls", {"removed": len(urls)})
        return None
