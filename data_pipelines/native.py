"""The compiled inner loops of the filters and the books reader (``data_pipelines/_native.c``), or ``None``.

``pip install -e .`` builds the extension in place when a C compiler is there; every caller keeps an exact
Python/numpy path for an install without one. A build older than the source (the ``.so`` is not tracked, so a
checkout can move ahead of it until the next ``pip install -e .`` or ``make``) lacks functions its callers use:
then it is not used either, and a warning says how to rebuild it.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

FUNCTIONS = ("langid_walk", "gopher_ngrams", "gopher_quality", "markers_in", "normalize_unchanged",
             "gopher_lines", "fineweb_counts", "c4_lines", "pii_candidates", "find_folded", "book_lines", "book_join",
             "utf8_len")

try:
    from data_pipelines import _native as compiled
except ImportError:  # no C compiler at install time
    compiled = None

if compiled is not None and not all(hasattr(compiled, name) for name in FUNCTIONS):
    log.warning("%s is older than data_pipelines/_native.c (it lacks %s): the filters and the books reader take "
                "their numpy paths; run `pip install -e .` to rebuild it", compiled.__file__,
                ", ".join(name for name in FUNCTIONS if not hasattr(compiled, name)))
    compiled = None
