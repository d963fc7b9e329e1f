"""The teacher of ``objective=distill``: where ``distill.teacher`` points, what model it holds, whether its tokenizer
is the student's, and loading it (eval mode, no gradients, fp32 or bf16, on this rank's device).

``distill.teacher`` is either a local Hugging Face directory (``config.json`` naming a class of
:data:`pretrain.hf.ARCHITECTURES`, ``*.safetensors``, ``tokenizer.json``; what ``python -m pretrain.export``
writes), imported through our own import path (:mod:`pretrain.hf`, as ``model.init_from`` is), or one of our
checkpoints (a run directory, its ``checkpoints/`` folder or a tag folder), read through the layout-free copy or
DeepSpeed's files whatever its ZeRO stage and tp x pp layout (:func:`pretrain.export.load_model`). Either way
the teacher is one of our models, so its ``forward`` without labels returns the logits the soft loss needs.

:func:`find_teacher` reads JSON only (no weights), so the trainer checks the teacher in ``plan``, before any
process group or model exists; :func:`load_teacher` reads the weights in ``build``. Nothing downloads.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pretrain.core.errors import CheckpointError, ConfigError, DataError

log = logging.getLogger("pretrain")

KEY = "distill.teacher"


@dataclass
class TeacherSource:
    """What ``distill.teacher`` designates: ``kind`` is ``hf`` or ``checkpoint``."""

    kind: str
    path: Path
    family: str
    args: Any
    tokenizer: Path | None
    checkpoint: Any = None  # pretrain.export.Source of a checkpoint teacher

    def describe(self) -> str:
        what = "Hugging Face directory" if self.kind == "hf" else "checkpoint"
        return f"{KEY}={self.path} ({what}, a {self.family} model with {self.args.num_layers} layers, hidden " \
               f"{self.args.hidden_size})"


def find_teacher(path: str) -> TeacherSource:
    """The teacher ``path`` designates, from its JSON files only; a ConfigError/CheckpointError naming the key."""
    p = Path(path).expanduser().absolute()
    if not p.is_dir():
        raise ConfigError(f"{KEY}={path}: no such directory (expected a Hugging Face model directory or one of our "
                          "checkpoints: a run directory, its checkpoints/ folder or a step_NNNNNN folder)")
    if (p / "config.json").is_file():
        return _hf_teacher(p)
    from pretrain import export

    try:
        source = export.find_checkpoint(p)
        family, args = export.model_args(source)
    except CheckpointError as e:
        raise CheckpointError(f"{KEY}={path} (no config.json, so not a Hugging Face directory; read as one of our "
                              f"checkpoints): {e}") from None
    tok = source.state.get("tokenizer")
    return TeacherSource("checkpoint", p, family.name, args, Path(tok) if tok else None, source)


def _hf_teacher(p: Path) -> TeacherSource:
    from pretrain import hf
    from pretrain.models import FAMILIES

    try:
        c = json.loads((p / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{KEY}={p}: cannot read config.json ({e})") from None
    arch = (c.get("architectures") or [None])[0]
    if arch not in hf.ARCHITECTURES:
        raise CheckpointError(f"{KEY}={p}: architecture {arch or '(none named in config.json)'} cannot be imported; "
                              f"supported: {', '.join(hf.ARCHITECTURES)}")
    family = hf.ARCHITECTURES[arch]
    # an architecture without a length in config.json (BLOOM: ALiBi) gets one; the teacher runs at the student's
    args = FAMILIES[family].args_type(**{"seq_length": 2048, **hf.args_from_hf_config(arch, c, p)})
    tok = p / "tokenizer.json"
    return TeacherSource("hf", p, family, args, tok if tok.is_file() else None)


# ------------------------------------------------------------------------------------------------ tokenizers


def _tokenizer_facts(path: Path | None, whose: str) -> tuple[Any, dict[str, int]]:
    """(the vocabulary as tokenizer.json stores it, special token text -> id) of ``path``."""
    if path is None:
        raise DataError(f"objective=distill compares the student's and the teacher's tokenizers, and the {whose} has "
                        "no tokenizer.json to compare (a Hugging Face teacher needs one beside config.json; a "
                        "checkpoint names its run's tokenizer in trainer_state.json)")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read the {whose}'s tokenizer {path}: {e}") from None
    special = {t["content"]: int(t["id"]) for t in data.get("added_tokens", []) if t.get("special", True)}
    return (data.get("model") or {}).get("vocab"), special


def check_tokenizers(student: Path | None, teacher: TeacherSource) -> None:
    """Refuse, naming both files, a teacher whose tokenizer is not the student's: the soft loss compares the two
    models' distributions token id by token id, so the vocabularies and special tokens must be one."""
    s_vocab, s_special = _tokenizer_facts(student, "student (the training data's manifest)")
    t_vocab, t_special = _tokenizer_facts(teacher.tokenizer, f"teacher ({KEY}={teacher.path})")
    problems = []
    if s_vocab != t_vocab:
        n_s, n_t = len(s_vocab or ()), len(t_vocab or ())
        problems.append(f"vocabularies differ ({n_s} vs {n_t} entries{_first_difference(s_vocab, t_vocab)})")
    if s_special != t_special:
        problems.append(f"special tokens differ (student {sorted(s_special.items())}, teacher "
                        f"{sorted(t_special.items())})")
    if problems:
        raise DataError(f"the teacher's tokenizer {teacher.tokenizer} does not match the student's {student}: "
                        f"{'; '.join(problems)}; objective=distill needs both models on one tokenizer (train or "
                        f"export the teacher on the data's tokenizer, or choose data whose manifest names the "
                        f"teacher's)")


def _first_difference(a: Any, b: Any) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                return f"; first: {k!r} is {a.get(k)!r} in the student's, {b.get(k)!r} in the teacher's"
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"; first at id {i}: {x!r} vs {y!r}"
    return ""


# ------------------------------------------------------------------------------------------------ loading


def load_teacher(source: TeacherSource, dtype: str, device: Any):
    """The teacher model: weights from ``source``, eval mode, ``requires_grad`` off, in ``dtype`` on ``device``.
    Built under a forked RNG, so loading it draws nothing from the student's streams."""
    import torch

    from pretrain.models import get_family

    with torch.random.fork_rng(devices=[]):
        if source.kind == "hf":
            from pretrain import hf

            model = get_family(source.family).make_model(source.args)
            try:
                hf.load_into(model, source.path, source.family, source.args)
            except CheckpointError as e:  # the import's messages name the key it was written for
                raise CheckpointError(str(e).replace("model.init_from=", f"{KEY}=")) from None
        else:
            from pretrain import export

            _, _, model = export.load_model(source.checkpoint)
    model = model.to(device=device, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    model.eval().requires_grad_(False)
    n = sum(p.numel() for p in model.parameters())
    log.info("distillation teacher: %s, %.2fM parameters in %s on %s (replicated on every rank)",
             source.describe(), n / 1e6, dtype, device)
    return model
