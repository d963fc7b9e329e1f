"""SPDX id of a repository's licence file, from phrases every copy of that licence contains.

Why hand-written: the thorough tool (ScanCode) is a multi-hundred-megabyte install that is far slower
than a pipeline stage can afford; for the licence files repositories actually ship, the distinctive
sentences below identify the common licences unambiguously. Anything else is ``NOASSERTION`` (a file is
there but not recognised); a repository without one is ``NONE`` (the SPDX conventions).
"""

from __future__ import annotations

import os
import re

LICENSE_FILE_NAMES = (
    "LICENSE", "LICENSE.txt", "LICENSE.md", "LICENSE.rst", "LICENCE", "LICENCE.txt", "LICENCE.md",
    "COPYING", "COPYING.txt", "COPYING.md", "LICENSE-MIT", "LICENSE-APACHE", "UNLICENSE",
)

# Licences known by their title: (spdx id, phrases that must all occur in the first 300 characters). The
# GNU licences name each other in their bodies, so only the title tells them apart.
_TITLE_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("AGPL-3.0", ("gnu affero general public license", "version 3")),
    ("LGPL-3.0", ("gnu lesser general public license", "version 3")),
    ("LGPL-2.1", ("gnu lesser general public license", "version 2.1")),
    ("LGPL-2.0", ("gnu library general public license", "version 2")),
    ("GPL-3.0", ("gnu general public license", "version 3")),
    ("GPL-2.0", ("gnu general public license", "version 2")),
    ("Apache-2.0", ("apache license", "version 2.0")),
    ("MPL-2.0", ("mozilla public license", "2.0")),
)
# Licences known by a sentence of their body, checked in order: the more specific first.
_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("PSF-2.0", ("python software foundation license version 2",)),
    ("BSL-1.0", ("boost software license", "version 1.0")),
    ("Unlicense", ("this is free and unencumbered software released into the public domain",)),
    ("CC0-1.0", ("cc0 1.0 universal",)),
    ("ISC", ("permission to use, copy, modify, and", "distribute this software for any purpose with or without fee")),
    ("MIT", ("permission is hereby granted, free of charge, to any person obtaining a copy",)),
    ("BSD-3-Clause", ("redistribution and use in source and binary forms", "neither the name")),
    ("BSD-2-Clause", ("redistribution and use in source and binary forms",)),
    ("Zlib", ("this software is provided 'as-is', without any express or implied",
              "altered source versions must be plainly marked")),
)


def detect_spdx(text: str) -> str:
    """The SPDX id whose phrases all occur in ``text`` (whitespace and case ignored), else NOASSERTION."""
    norm = re.sub(r"\s+", " ", text.lower())
    norm = norm.replace("\u2019", "'").strip()
    head = norm[:300]
    titled = [(head.index(phrases[0]), i, spdx) for i, (spdx, phrases) in enumerate(_TITLE_RULES)
              if all(p in head for p in phrases)]
    if titled:  # the title that comes first is the licence's own; later ones are mentions
        return min(titled)[2]
    for spdx, phrases in _RULES:
        if all(p in norm for p in phrases):
            if spdx == "BSD-3-Clause" and "advertising materials" in norm:
                return "BSD-4-Clause"
            return spdx
    return "NOASSERTION"


def find_license_file(repo_dir: str) -> str | None:
    """The first licence file at the repository root (names as GitHub recognises them)."""
    try:
        names = set(os.listdir(repo_dir))
    except OSError:
        return None
    for name in LICENSE_FILE_NAMES:
        if name in names and os.path.isfile(os.path.join(repo_dir, name)):
            return os.path.join(repo_dir, name)
    lowered = {n.lower(): n for n in sorted(names)}
    for name in LICENSE_FILE_NAMES:
        if name.lower() in lowered:
            return os.path.join(repo_dir, lowered[name.lower()])
    return None


def repo_license(repo_dir: str, max_bytes: int = 1 << 20) -> str:
    """SPDX id of ``repo_dir``'s licence file; ``NONE`` without one."""
    path = find_license_file(repo_dir)
    if path is None:
        return "NONE"
    with open(path, "rb") as f:
        return detect_spdx(f.read(max_bytes).decode("utf-8", errors="replace"))
