"""Scheduled data mixtures: ``data.schedule``, a list of phases whose weights change during the run.

    data:
      schedule:
        - until_tokens: 9.0e9                 # the first 90% of a 10B-token run
          weights: {web: 0.7, code: 0.2, books: 0.1}
        - until_tokens: 1.0e10                # the last 10%: code and books annealed up, linearly
          weights: {web: 0.4, code: 0.35, books: 0.25}
          interpolate: linear

A phase holds its weights up to its boundary (``until_tokens``, or ``until_step`` optimizer steps); with
``interpolate: linear`` its weights are reached linearly from the previous phase's over the phase. The last
phase may leave its boundary out, and its weights hold after it. Weights are normalised per phase; a corpus
a phase does not name has weight 0 there.

Boundaries become global-sample positions (tokens / tokens per sample; steps x global batch), and the blend
(:class:`pretrain.data.blend.ScheduledBlend`) is a pure function of them, so a run resumed anywhere reads exactly
the samples of an uninterrupted one. A linear ramp is cut into :data:`RAMP_PIECES` constant pieces, each holding
the mean of the ramp over it, so the counts per corpus follow the exact linear ramp at every piece boundary.

The resolved schedule is saved in checkpoints (by :class:`pretrain.data.tracking.MixtureTracker`); a run
resumed with another one is refused unless ``data.schedule_changed=allow``, which continues with the new
schedule from the checkpoint's position on, every corpus from the very sample it had reached (nothing is
repeated or skipped).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig, OmegaConf

from pretrain.core.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger(__name__)

RAMP_PIECES = 1024
STATE_KEY = "data_mixture"
CHANGED_MODES = ("refuse", "allow")
PHASE_KEYS = ("until_tokens", "until_step", "weights", "interpolate")


def _plain(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, (DictConfig, ListConfig)) else x


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


@dataclass
class Phase:
    until: float | None  # boundary as a global-sample position (None: open, the last phase)
    weights: dict[str, float]  # normalised, positive entries only
    linear: bool


def parse_phases(raw: Any, corpora: list[str] | None = None) -> tuple[list[dict], list[str]]:
    """Check the shape of ``data.schedule`` without converting units: returns the phases as plain dicts and
    the problems found, each naming its key (``data.schedule[1].until_step``)."""
    raw = _plain(raw)
    if raw is None or raw == []:
        return [], []
    if not isinstance(raw, list):
        return [], [f"data.schedule must be a list of phases {{until_tokens|until_step: X, weights: {{corpus: w}}}}, "
                    f"got {raw!r}"]
    problems: list[str] = []
    last = {"until_tokens": None, "until_step": None}
    for i, ph in enumerate(raw):
        key = f"data.schedule[{i}]"
        if not isinstance(ph, Mapping):
            problems.append(f"{key}={ph!r} must be a map {{until_tokens|until_step: X, weights: {{corpus: w}}}}")
            continue
        for k in ph:
            if k not in PHASE_KEYS:
                problems.append(f"{key}.{k}: unknown key (expected {', '.join(PHASE_KEYS)})")
        bounds = [k for k in ("until_tokens", "until_step") if ph.get(k) is not None]
        if len(bounds) == 2:
            problems.append(f"{key} sets both until_tokens and until_step; give one boundary per phase")
        elif not bounds and i < len(raw) - 1:
            problems.append(f"{key} has no boundary (until_tokens or until_step); only the last phase may leave it out")
        for b in bounds:
            v = _number(ph[b])
            if v is None or v <= 0 or (b == "until_step" and v != int(v)):
                what = "a whole number of steps > 0" if b == "until_step" else "a number of tokens > 0"
                problems.append(f"{key}.{b}={ph[b]!r} must be {what}")
            elif last[b] is not None and v <= last[b][1]:
                problems.append(f"{key}.{b}={ph[b]} is not after {last[b][0]}.{b}={last[b][1]:g}; boundaries must "
                                f"increase")
            else:
                last[b] = (key, v)
        interp = ph.get("interpolate")
        if interp not in (None, "none", "linear"):
            problems.append(f"{key}.interpolate={interp!r}; expected linear or none")
        elif interp == "linear" and i == 0:
            problems.append(f"{key}.interpolate=linear: the first phase has no previous weights to start from")
        elif interp == "linear" and not bounds:
            problems.append(f"{key}.interpolate=linear needs a boundary (until_tokens or until_step) to ramp to")
        w = ph.get("weights")
        if not isinstance(w, Mapping) or not w:
            problems.append(f"{key}.weights must map corpus names to weights, got {w!r}")
            continue
        for name, x in w.items():
            v = _number(x)
            if v is None or v < 0:
                problems.append(f"{key}.weights.{name}={x!r} must be a finite number >= 0")
            if corpora is not None and name not in corpora:
                problems.append(f"{key}.weights names corpus '{name}', which the data has not (available: "
                                f"{', '.join(corpora)})")
        if all((_number(x) or 0) <= 0 for x in w.values()):
            problems.append(f"{key}.weights gives every corpus weight 0")
    return raw, problems


def _corpora_of(d: Any) -> list[str] | None:
    """The corpus names of ``data.path`` (or the built-in sample data), without opening a shard."""
    from pathlib import Path

    path = getattr(d, "path", None)
    if path is None:
        from pretrain.data.sample import CORPORA

        return list(CORPORA)
    folder = Path(str(path)).expanduser()
    if not (folder / "manifest.json").is_file():
        return None  # reported by the data.path check
    from pretrain.core.manifest import read_manifest

    try:
        return list(read_manifest(folder).corpora)
    except DataError:
        return None


def schedule_problems(d: Any) -> list[str]:
    """Every problem of ``data.schedule`` / ``data.schedule_changed`` that needs no batch size (see validation)."""
    out = []
    mode = getattr(d, "schedule_changed", "refuse")
    if mode not in CHANGED_MODES:
        out.append(f"data.schedule_changed={mode!r}; expected {' or '.join(CHANGED_MODES)}")
    raw = getattr(d, "schedule", None)
    if not raw:
        return out
    if getattr(d, "weights", None):
        out.append("data.weights and data.schedule are both set; give the weights in the schedule's phases")
    _, problems = parse_phases(raw, _corpora_of(d))
    return out + problems


def resolve_phases(raw: Any, tokens_per_sample: int, global_batch_size: int) -> list[Phase]:
    """Phases with boundaries in global samples; refuses (naming the key) what :func:`parse_phases` refuses and
    boundaries that do not increase once until_tokens and until_step are in the same unit."""
    phases, problems = parse_phases(raw)
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    out: list[Phase] = []
    prev = 0.0
    for i, ph in enumerate(phases):
        if ph.get("until_tokens") is not None:
            until = float(ph["until_tokens"]) / tokens_per_sample
        elif ph.get("until_step") is not None:
            until = float(int(ph["until_step"]) * global_batch_size)
        else:
            until = None
        if until is not None and until <= prev:
            raise ConfigError(
                f"data.schedule[{i}] ends at sample {until:g} ({tokens_per_sample} tokens per sample, global batch "
                f"{global_batch_size}), not after the previous phase's end at sample {prev:g}; boundaries must "
                f"increase")
        w = {str(n): float(x) for n, x in ph["weights"].items() if float(x) > 0}
        total = sum(w.values())
        out.append(Phase(until, {n: x / total for n, x in w.items()}, ph.get("interpolate") == "linear"))
        prev = until if until is not None else prev
    return out


class Mixture:
    """A resolved schedule: its phases (boundaries in global samples) and, after a change was allowed on resume,
    where it took over (``start``: the global sample; ``offsets``: the samples each corpus had supplied by then)
    from the mixture before it (``previous``)."""

    def __init__(self, phases: list[Phase], start: int = 0, offsets: dict[str, int] | None = None,
                 previous: "Mixture | None" = None):
        self.phases, self.start, self.previous = phases, int(start), previous
        self.offsets = {str(n): int(v) for n, v in (offsets or {}).items()}
        self._segments: dict[tuple[str, ...], list[tuple[float, list[float]]]] = {}
        names: list[str] = []
        for m in self.chain():
            for ph in m.phases:
                names += [n for n in ph.weights if n not in names]
            names += [n for n in m.offsets if n not in names]
        self.sources = names

    @staticmethod
    def fixed(weights: dict[str, float]) -> "Mixture":
        """Fixed weights as a one-phase schedule (the same blend as :class:`~pretrain.data.blend.Blend`'s)."""
        total = sum(weights.values())
        return Mixture([Phase(None, {n: w / total for n, w in weights.items() if w > 0}, False)])

    def chain(self) -> list["Mixture"]:
        """This mixture and the ones before it, oldest first."""
        out, m = [], self
        while m is not None:
            out.insert(0, m)
            m = m.previous
        return out

    def check_sources(self, manifest) -> dict[str, float]:
        """Refuse sources the manifest lacks; returns every source's weight in the validation total (its weight
        in the last phase)."""
        for n in self.sources:
            if n not in manifest.corpora:
                raise DataError(f"data.schedule names corpus '{n}', which {manifest.root / 'manifest.json'} does not "
                                f"have; available corpora: {', '.join(manifest.corpora)}")
        return {n: self.phases[-1].weights.get(n, 0.0) for n in self.sources}

    def segments(self, names: list[str]) -> list[tuple[float, list[float]]]:
        """Piecewise-constant weights over ``names``, positions relative to :attr:`start`; ramps cut in pieces."""
        key = tuple(names)
        if key not in self._segments:
            self._segments[key] = self._build_segments(names)
        return self._segments[key]

    def _build_segments(self, names: list[str]) -> list[tuple[float, list[float]]]:
        vec = lambda w: np.asarray([w.get(n, 0.0) for n in names], dtype=np.float64)  # noqa: E731
        segs: list[tuple[float, list[float]]] = []
        phase_start, prev_w = 0.0, None
        for ph in self.phases:
            end = math.inf if ph.until is None else ph.until
            if ph.linear and prev_w is not None:
                a, b = vec(prev_w), vec(ph.weights)
                edges = np.linspace(phase_start, end, RAMP_PIECES + 1)
                segs += [(float(edges[p + 1]), list(a + (b - a) * ((p + 0.5) / RAMP_PIECES)))
                         for p in range(RAMP_PIECES)]
            else:
                segs.append((end, list(vec(ph.weights))))
            phase_start, prev_w = end, ph.weights
        if not math.isinf(segs[-1][0]):  # after the last boundary: the last phase's weights (a ramp's target)
            segs.append((math.inf, list(vec(self.phases[-1].weights))))
        out = [(e - self.start, w) for e, w in segs if e - self.start > 0]  # what lies after this mixture's start
        return [(e, [float(x) / float(sum(w)) for x in w]) for e, w in out]

    def blend(self, names: list[str]):
        """The blend over ``names`` (the dataset's corpus order)."""
        from pretrain.data.blend import ScheduledBlend

        if self.previous is None and self.start == 0:
            return ScheduledBlend(self.segments(names))
        return ChainedBlend([(m.start, [m.offsets.get(n, 0) for n in names], ScheduledBlend(m.segments(names)))
                             for m in self.chain()])

    def weights_at(self, sample: float, names: list[str]) -> dict[str, float]:
        """The weights in force at global sample position ``sample``."""
        m = next(m for m in reversed(self.chain()) if m.start <= sample)
        x = sample - m.start
        for end, w in m.segments(names):
            if x < end:
                return dict(zip(names, w))
        raise AssertionError("segments end at infinity")

    def to_json(self) -> dict[str, Any]:
        return {
            "phases": [{"until_sample": p.until, "weights": p.weights, "linear": p.linear} for p in self.phases],
            "start": self.start, "offsets": self.offsets,
            "previous": self.previous.to_json() if self.previous is not None else None,
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Mixture":
        prev = Mixture.from_json(d["previous"]) if d.get("previous") else None
        phases = [Phase(p["until_sample"], dict(p["weights"]), bool(p["linear"])) for p in d["phases"]]
        return Mixture(phases, d.get("start", 0), d.get("offsets"), prev)

    def describe(self) -> str:
        """The phases in one line: ``until sample 24: prose=0.25 code=0.75; ...; then: prose=1``."""
        parts = []
        for p in self.phases:
            w = " ".join(f"{n}={v:.4g}" for n, v in p.weights.items())
            head = "then" if p.until is None else f"until sample {p.until:g}"
            parts.append(f"{head}{' (linear)' if p.linear else ''}: {w}")
        return "; ".join(parts)

    def same_schedule(self, other: "Mixture") -> bool:
        return [(p.until, p.weights, p.linear) for p in self.phases] == [
            (p.until, p.weights, p.linear) for p in other.phases]


class ChainedBlend:
    """Blends that follow each other: piece ``p`` serves global samples from ``start_p`` on, its corpus ``k``
    continuing at within-corpus sample ``offsets_p[k]`` (where the earlier pieces left it)."""

    def __init__(self, pieces: list[tuple[int, list[int], Any]]):
        self.pieces = pieces
        self.starts = [s for s, _, _ in pieces]
        self.weights = pieces[-1][2].weights

    def _piece(self, i: int) -> int:
        return int(np.searchsorted(self.starts, i, side="right")) - 1

    def __getitem__(self, i: int) -> tuple[int, int]:
        p = self._piece(int(i))
        start, off, blend = self.pieces[p]
        k, m = blend[int(i) - start]
        return k, m + off[k]

    def range(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        corpora, locals_ = [], []
        for p, (s, off, blend) in enumerate(self.pieces):
            end = self.starts[p + 1] if p + 1 < len(self.pieces) else stop
            a, b = max(start, s), min(stop, end)
            if b > a:
                c, m = blend.range(a - s, b - s)
                corpora.append(c)
                locals_.append(m + np.asarray(off, dtype=np.int64)[c])
        if not corpora:
            return np.zeros(0, np.int16), np.zeros(0, np.int64)
        return np.concatenate(corpora), np.concatenate(locals_)

    def counts(self, n: int) -> np.ndarray:
        p = self._piece(max(int(n) - 1, 0))
        start, off, blend = self.pieces[p]
        return np.asarray(off, dtype=np.int64) + blend.counts(max(int(n) - start, 0))


# ---------------------------------------------------------------------------------------------- planning


def plan_mixture(data_cfg: Any, resume_state: dict[str, Any], tokens_per_sample: int,
                 global_batch_size: int) -> Mixture | None:
    """The run's mixture (None: fixed weights, the unscheduled path), checked against the checkpoint's."""
    raw = getattr(data_cfg, "schedule", None)
    mixture = Mixture(resolve_phases(raw, tokens_per_sample, global_batch_size)) if raw else None
    if mixture is not None:
        log.info("data.schedule: %s", mixture.describe())
    if "step" not in resume_state:  # a fresh run
        return mixture
    state = (resume_state.get("callbacks") or {}).get(STATE_KEY) or {}
    if state.get("mixture"):
        saved = Mixture.from_json(state["mixture"])
    elif state.get("weights"):
        saved = Mixture.fixed(state["weights"])
    else:  # a checkpoint from before mixtures were tracked: trained with fixed weights
        saved = None
    was_scheduled = bool(state.get("mixture"))
    if mixture is None and not was_scheduled:
        return None  # fixed weights before and now: the unscheduled path, as always
    if mixture is not None and was_scheduled and saved.same_schedule(mixture):
        return saved  # the same schedule, with the history of any change allowed earlier
    step, consumed = int(resume_state["step"]), int(resume_state.get("consumed_samples", 0))
    fixed = "fixed data.weights (no data.schedule)"
    had = f"another data.schedule ({saved.describe()})" if was_scheduled else fixed
    now = f"data.schedule {mixture.describe()}" if mixture is not None else fixed
    if getattr(data_cfg, "schedule_changed", "refuse") != "allow":
        raise CheckpointError(
            f"the checkpoint at step {step} was trained with {had}; this run has {now} (boundaries in global samples: "
            f"tokens / tokens per sample, until_step x global batch). Restore the schedule, or set "
            f"data.schedule_changed=allow to continue with the new mixture from this step on")
    log.warning("data.schedule_changed=allow: the checkpoint at step %d was trained with %s; continuing with %s "
                "from sample %d on%s", step, had, now, consumed,
                "" if mixture is not None else " (fixed weights restart their blend from sample 0)")
    if mixture is None:
        return None
    offsets = state.get("consumed_samples")
    if saved is None or offsets is None:
        log.warning("the checkpoint does not record the samples each corpus supplied: the schedule starts from "
                    "each corpus's first sample")
        return mixture
    return Mixture(mixture.phases, consumed, offsets, saved)
