"""Offline language identification with ``py3langid`` (its model ships inside the wheel: nothing downloads).

``py3langid`` 0.4 normalises its probabilities with a temperature of sqrt(bytes), so one threshold (0.65, as
in datatrove's ``LanguageFilter``) means the same for short and long documents.
"""

from __future__ import annotations

from collections import Counter

from data_pipelines.document import Document
from data_pipelines.filters.base import DocumentFilter, add_extra, invalid
from data_pipelines.filters.langid_fast import FastLanguageIdentifier, fast_identifier
from data_pipelines.stats import StageStats


def _identifier():
    """The model, loaded once per process (0.5 s) and shared by every language block in it; its byte walk
    vectorised with the same scores (:mod:`data_pipelines.filters.langid_fast`)."""
    return fast_identifier()


class LanguageFilter(DocumentFilter):
    """Keep documents written in one of ``languages`` with probability >= ``threshold``.

    The kept language and its probability go to ``metadata["lang"]``/``metadata["lang_score"]``; the
    most likely language of every document seen is counted in ``stats.extra["lang_detected"]`` so the report
    shows what was dropped. An empty ``languages`` list keeps any language whose top score passes.
    Only the first ``max_chars`` characters are scored (language does not change mid-document).
    """

    name = "language"

    def __init__(self, *, languages: list[str] | None = None, threshold: float = 0.65, max_chars: int = 10000):
        languages = ["en"] if languages is None else list(languages)
        unknown = sorted(set(languages) - set(_identifier().labels))
        if unknown:
            raise invalid("languages", unknown, "ISO 639-1 codes known to py3langid (e.g. en, de, fr, zh)")
        if not 0.0 <= threshold <= 1.0:
            raise invalid("threshold", threshold, "a probability between 0 and 1")
        if max_chars < 1:
            raise invalid("max_chars", max_chars, "a positive number of characters")
        self.languages = languages
        self.threshold = threshold
        self.max_chars = max_chars

    def detect(self, text: str) -> tuple[str, float, str]:
        """``(language kept or best, its probability, most likely language overall)``."""
        ident = _identifier()
        if isinstance(ident, FastLanguageIdentifier):
            return ident.detect(text[: self.max_chars], self.languages)
        ranked = ident.rank(text[: self.max_chars])
        top, top_score = ranked[0]
        if not self.languages:
            return top, top_score, top
        scores = dict(ranked)
        best = max(self.languages, key=lambda lang: scores[lang])  # ties: the first listed
        return best, scores[best], top

    def apply(self, doc: Document, stats: StageStats) -> str | None:
        found = self.detect(doc.text)
        add_extra(stats, "lang_detected", {found[2]: 1})
        return self._judge(doc, found)

    batch_size = 256

    def apply_batch(self, docs: list[Document], stats: StageStats) -> list[str | None]:
        ident = _identifier()
        if not isinstance(ident, FastLanguageIdentifier):
            return super().apply_batch(docs, stats)
        found = ident.detect_many([doc.text[: self.max_chars] for doc in docs], self.languages)
        add_extra(stats, "lang_detected", Counter(top for _, _, top in found))
        return [self._judge(doc, result) for doc, result in zip(docs, found)]

    def _judge(self, doc: Document, found: tuple[str, float, str]) -> str | None:
        lang, score, _ = found
        if score < self.threshold:
            return "lang_below_threshold"
        doc.metadata["lang"] = lang
        doc.metadata["lang_score"] = round(score, 4)
        return None
