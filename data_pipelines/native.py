"""The compiled inner loops of the filters and the books reader (``data_pipelines/_native.c``), or ``None``.

``pip install -e .`` builds the extension in place when a C compiler is there; every caller keeps an exact
Python/numpy path for an install without one. A build from another version of the source (the ``.so`` is not
tracked, so a checkout can move ahead of it until the next ``pip install -e .`` or ``make``) may lack functions
its callers use, or take other arguments: it is used only if its ``VERSION`` is this file's (the source raises
both with any such change), else a warning says how to rebuild it.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

VERSION = 5  # _native.c's NATIVE_VERSION

try:
    from data_pipelines import _native as compiled
except ImportError:  # no C compiler at install time
    compiled = None

if compiled is not None and getattr(compiled, "VERSION", None) != VERSION:
    log.warning("%s was built from another version of data_pipelines/_native.c (version %s, expected %s): the "
                "filters and the books reader take their numpy paths; run `pip install -e .` to rebuild it",
                compiled.__file__, getattr(compiled, "VERSION", "1 or older"), VERSION)
    compiled = None
