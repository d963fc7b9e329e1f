"""Typed dedup config (the ``dedup`` group of the pipeline's Hydra schema) and the LSH parameter math.

Choosing bands x rows
---------------------
With ``b`` bands of ``r`` rows, two documents of Jaccard similarity ``J`` share at least one band bucket
with probability ``P(J) = 1 - (1 - J**r)**b`` (every row of a band agrees with probability ``J``). This
S-curve rises steepest near ``t = (1/b)**(1/r)``, the *threshold* we report for a configuration
(:attr:`MinHashParams.threshold`).

* web/wiki/books (reference default): word 5-grams, 14 x 8 = 112 permutations, ``t = 0.719``;
  ``P(0.5) = 0.05``, ``P(0.6) = 0.21``, ``P(0.72) = 0.65``, ``P(0.8) = 0.92``, ``P(0.85) = 0.99``.
* code: target ``J >= 0.7`` with 256 permutations. :func:`optimal_bands_rows` picks the ``(b, r)`` with
  ``b * r <= 256`` that minimises the (equally weighted) false-positive area ``int_0^0.7 P(J) dJ`` plus
  false-negative area ``int_0.7^1 1 - P(J) dJ`` -- the same criterion as BigCode's near-dedup
  of The Stack and ``datasketch.MinHashLSH``. It gives ``b = 25, r = 10`` (250 of the 256 permutations
  used): ``t = 0.725``, ``P(0.5) = 0.02``, ``P(0.6) = 0.14``, ``P(0.7) = 0.51``, ``P(0.8) = 0.94``,
  ``P(0.85) = 0.996``.
  Code shingles are 5-grams of identifier/number tokens (``\\w+`` runs, punctuation dropped), as BigCode
  does; ``shingle: char`` (character n-grams) is the alternative for code without clean token boundaries.

``tests/pipeline/test_dedup_minhash.py`` checks the documented numbers against the formula, so this docstring
cannot drift from the code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

import numpy as np
import xxhash

from pretrain.core.errors import ConfigError

SHINGLE_MODES = ("word", "token", "char")
VERIFY_MODES = ("none", "signature", "exact")


@dataclass(frozen=True)
class MinHashParams:
    """Fully resolved near-dedup parameters of one document kind (what a signature file was built with)."""

    shingle: str = "word"  # word: whitespace words; token: \w+ runs (code); char: character n-grams
    ngram: int = 5
    num_perm: int = 112
    bands: int = 14
    rows: int = 8
    seed: int = 1
    lowercase: bool = True

    def __post_init__(self) -> None:
        if self.shingle not in SHINGLE_MODES:
            raise ConfigError(f"shingle={self.shingle!r}: expected one of {', '.join(SHINGLE_MODES)}")
        for name in ("ngram", "num_perm", "bands", "rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r}: expected a positive integer")
        if self.bands * self.rows > self.num_perm:
            raise ConfigError(
                f"bands x rows = {self.bands} x {self.rows} = {self.bands * self.rows} needs at least that "
                f"many permutations, but num_perm={self.num_perm}"
            )
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed={self.seed!r}: expected an integer in [0, 2**63)")

    @property
    def threshold(self) -> float:
        """Approximate Jaccard threshold of the LSH S-curve, ``(1/b)**(1/r)``."""
        return (1.0 / self.bands) ** (1.0 / self.rows)

    def detection_probability(self, jaccard: float | np.ndarray) -> float | np.ndarray:
        """P(two documents with this Jaccard share a band bucket) = ``1 - (1 - J**r)**b``."""
        return 1.0 - (1.0 - np.asarray(jaccard, dtype=np.float64) ** self.rows) ** self.bands

    @property
    def fingerprint(self) -> int:
        """A 64-bit id of these parameters: seeds the band hashes, so band hashes built with different
        parameters (web vs code) never share a bucket, and a stale signature file is detected."""
        canon = json.dumps(asdict(self), sort_keys=True).encode()
        return xxhash.xxh3_64_intdigest(canon)


@dataclass
class KindOverride:
    """Per-kind near-dedup settings; ``None`` inherits the top-level value."""

    shingle: Optional[str] = None
    ngram: Optional[int] = None
    num_perm: Optional[int] = None
    bands: Optional[int] = None
    rows: Optional[int] = None
    lowercase: Optional[bool] = None


def _code_override() -> KindOverride:
    # 256 permutations at J >= 0.7: bands x rows from optimal_bands_rows(0.7, 256) (module docstring).
    return KindOverride(shingle="token", ngram=5, num_perm=256, bands=25, rows=10)


@dataclass
class DedupConfig:
    """The ``dedup`` config group. ``exact`` and ``minhash`` switch the two dedup kinds (``dedup=none``
    turns both off). ``kinds`` overrides the near-dedup parameters per source kind (``web``, ``wiki``,
    ``books``, ``code``, ``jsonl``, ``parquet``); exact dedup always runs across all kinds together.
    ``bucket_parts`` splits the band-bucket step into that many independent parts (by band index and exact
    hash range) so no single process holds every band of every document.

    Candidate verification: ``verify=signature`` (default) merges an LSH candidate pair only when the
    fraction of agreeing entries of the two full signatures (the MinHash estimate of their Jaccard
    similarity) is at least ``threshold``; ``verify=exact`` checks the exact Jaccard of their shingle sets
    instead (the signature files then also hold every document's shingle hashes: about 4 bytes per word);
    ``verify=none`` takes every bucket collision as a duplicate (the classic large-scale choice). Each
    bucket member is compared with the ``verify_window`` members before it in key order (all pairs of a
    bucket up to ``verify_window + 1`` members), so a huge bucket costs ``m * verify_window`` checks, not
    ``m**2``."""

    exact: bool = True
    minhash: bool = True
    shingle: str = "word"
    ngram: int = 5
    num_perm: int = 112
    bands: int = 14
    rows: int = 8
    seed: int = 1
    lowercase: bool = True
    bucket_parts: int = 1
    batch_size: int = 512  # documents per vectorised signature batch (memory vs per-call overhead)
    verify: str = "signature"  # none | signature | exact: how an LSH candidate pair is checked before merging
    threshold: float = 0.7  # candidate pairs with a (estimated or exact) Jaccard below this are never merged
    verify_window: int = 16  # each bucket member is checked against this many earlier members
    memory_mb: int = 0  # > 0: bucket sort, verification and merge within about this memory, on disk (same output)
    kinds: dict[str, KindOverride] = field(default_factory=lambda: {"code": _code_override()})

    @property
    def enabled(self) -> bool:
        return bool(self.exact or self.minhash)

    def params_for(self, kind: str | None = None) -> MinHashParams:
        """The resolved :class:`MinHashParams` for documents of ``kind`` (top-level values if no override)."""
        values: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(MinHashParams)}
        override = self.kinds.get(kind) if kind is not None else None
        if override is not None:
            for f in fields(KindOverride):
                value = _get(override, f.name)
                if value is not None:
                    values[f.name] = value
        try:
            return MinHashParams(**values)
        except ConfigError as exc:
            where = f"dedup.kinds.{kind}" if override is not None else "dedup"
            raise ConfigError(f"{where}: {exc}") from None

    def validate(self) -> None:
        """Check every kind's parameters now, so a bad value stops the run before any shard is processed."""
        if not isinstance(self.bucket_parts, int) or self.bucket_parts < 1:
            raise ConfigError(f"dedup.bucket_parts={self.bucket_parts!r}: expected a positive integer")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"dedup.batch_size={self.batch_size!r}: expected a positive integer")
        if self.verify not in VERIFY_MODES:
            raise ConfigError(f"dedup.verify={self.verify!r}: expected one of {', '.join(VERIFY_MODES)}")
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not 0 < self.threshold <= 1:
            raise ConfigError(f"dedup.threshold={self.threshold!r}: expected a number in (0, 1]")
        if not isinstance(self.memory_mb, int) or isinstance(self.memory_mb, bool) or self.memory_mb < 0:
            raise ConfigError(f"dedup.memory_mb={self.memory_mb!r}: expected a non-negative integer (0: in memory)")
        if not isinstance(self.verify_window, int) or isinstance(self.verify_window, bool) or self.verify_window < 1:
            raise ConfigError(f"dedup.verify_window={self.verify_window!r}: expected a positive integer")
        self.params_for(None)
        for kind in self.kinds:
            self.params_for(kind)


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, dict) else getattr(obj, name, None)


def as_dedup_config(cfg: Any) -> DedupConfig:
    """Accept a :class:`DedupConfig`, an OmegaConf node or a plain dict (e.g. ``cfg.dedup`` from Hydra)."""
    if isinstance(cfg, DedupConfig):
        return cfg
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            cfg = OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # omegaconf is a dependency; this only keeps the module importable alone
        pass
    if not isinstance(cfg, dict):
        raise ConfigError(f"dedup config: expected a mapping, got {type(cfg).__name__}")
    known = {f.name for f in fields(DedupConfig)}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"dedup: unknown key(s) {', '.join(unknown)}; expected some of {', '.join(sorted(known))}")
    values = dict(cfg)
    if "kinds" in values:
        kinds = {}
        for kind, override in (values["kinds"] or {}).items():
            okeys = {f.name for f in fields(KindOverride)}
            bad = sorted(set(override or {}) - okeys)
            if bad:
                raise ConfigError(f"dedup.kinds.{kind}: unknown key(s) {', '.join(bad)}; expected some of {', '.join(sorted(okeys))}")
            kinds[kind] = KindOverride(**(override or {}))
        values["kinds"] = kinds
    out = DedupConfig(**values)
    out.validate()
    return out


def optimal_bands_rows(
    threshold: float, num_perm: int, fp_weight: float = 0.5, fn_weight: float = 0.5
) -> tuple[int, int]:
    """``(bands, rows)`` with ``bands * rows <= num_perm`` minimising the weighted areas under the S-curve
    below ``threshold`` (false positives) and above the curve beyond it (false negatives).

    Integrates with the trapezoid rule on a fine grid; ties go to the first ``(b, r)`` in lexicographic
    order, so the answer is deterministic.
    """
    if not 0.0 < threshold < 1.0:
        raise ConfigError(f"threshold={threshold!r}: expected a value in (0, 1)")
    lo = np.linspace(0.0, threshold, 2001)
    hi = np.linspace(threshold, 1.0, 2001)
    best: tuple[float, int, int] | None = None
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = np.trapezoid(1.0 - (1.0 - lo**r) ** b, lo)
            fn = np.trapezoid((1.0 - hi**r) ** b, hi)
            err = fp_weight * fp + fn_weight * fn
            if best is None or err < best[0] - 1e-15:
                best = (err, b, r)
    assert best is not None
    return best[1], best[2]
