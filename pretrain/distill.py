"""Knowledge distillation as a pretraining objective (``objective=distill``, docs/distillation.md).

The student is any model of our zoo's GPT or BERT families; the teacher (:mod:`pretrain.distill_teacher`) is
another model of the same family on the same tokenizer. Each training micro-batch's loss is

    loss = alpha * hard + (1 - alpha) * soft + cosine_weight * cos
    soft = T^2 * mean_i KL(softmax(t_i / T) || softmax(s_i / T))      (Hinton et al. 2015; DistilBERT)
    cos  = mean_j (1 - cos(h_s_j, h_t_j))                             (DistilBERT's hidden-state loss)

with ``hard`` the family's own loss on the data's labels, ``i`` the positions that have a label (every position
of a GPT window, the masked ones of a BERT window), ``t``/``s`` the teacher's and student's logits, and ``j`` the
non-padding positions of the last layer's hidden states. The T^2 keeps the soft gradients' scale independent of T.

How it plugs in without the trainer or the model files naming a family: the student module is left as its
family builds it (same parameter names, checkpoints and export), and :meth:`Distiller.attach` adds a forward
pre-hook that runs the teacher on the batch (no grad) and wraps the module's ``loss_fn`` (every family computes
its loss through it), which then adds the soft part on the positions the hard loss scores. The teacher is not a
submodule of the student: the engine never sees it (no optimizer state, not in checkpoints), and every rank
holds a full replica of it, also under ZeRO-3 (which shards the student only). Tensor and pipeline parallelism
are refused for now: the student's logits would be split over ranks (vocabulary-parallel) or exist on the last
stage only. In eval mode (the Evaluator) nothing changes: ``val_loss`` is the student's hard loss, comparable
with a run without distillation; :class:`DistillCallback` adds ``teacher_val_loss`` (computed once) and the
per-step ``distill_soft_loss`` / ``distill_hard_loss`` (/ ``distill_cos_loss``) to the metrics records.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from pretrain.callbacks import Callback, StepOutput
from pretrain.core.errors import ConfigError
from pretrain.distill_teacher import TeacherSource, check_tokenizers, find_teacher, load_teacher

if TYPE_CHECKING:
    from pretrain.trainer import Trainer

log = logging.getLogger("pretrain")

#: families whose ``forward`` without labels returns logits at every input position (what the teacher must give)
STUDENT_FAMILIES = ("gpt", "bert")
IGNORE = -100


def soft_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean over rows of KL(softmax(teacher / T) || softmax(student / T)), in fp32; rows = positions."""
    if student_logits.shape[0] == 0:
        return student_logits.float().sum() * 0.0
    t = temperature
    log_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * (t * t)


def cosine_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the positions kept by ``mask`` ([batch, seq], true = a real token) of 1 - cos(student, teacher)."""
    s, t = student_hidden.float(), teacher_hidden.float()
    if mask is not None:
        keep = mask.reshape(-1).bool()
        s, t = s.reshape(-1, s.size(-1))[keep], t.reshape(-1, t.size(-1))[keep]
    s, t = s.reshape(-1, s.size(-1)), t.reshape(-1, t.size(-1))
    if s.shape[0] == 0:
        return s.sum() * 0.0
    return (1.0 - F.cosine_similarity(s, t, dim=-1)).mean()


# ------------------------------------------------------------------------------------------------ plan


def plan_distill(cfg: Any, family: Any, args: Any, tokenizer: Any, plan: Any) -> "Distiller | None":
    """The distiller of ``cfg`` (None: the family's own objective), every setting checked against the student, the
    teacher's files (JSON only) and the layout; an error naming the key before any process group or model."""
    from pretrain.validation import _number_problems

    d = cfg.distill
    objective = getattr(cfg.objective, "value", cfg.objective)
    if objective != "distill":
        if d.teacher:
            raise ConfigError(f"distill.teacher={d.teacher} is set but objective={objective}; add objective=distill to "
                              "train from the teacher, or remove distill.teacher")
        return None
    problems = _number_problems(cfg, [("distill.temperature", ">0"), ("distill.alpha", "[0,1]"),
                                      ("distill.cosine_weight", ">=0")])
    if not d.teacher:
        problems.append("objective=distill needs distill.teacher=<a Hugging Face directory or one of our checkpoints>")
    if family.name not in STUDENT_FAMILIES:
        problems.append(f"objective=distill trains GPT or BERT students ({', '.join(STUDENT_FAMILIES)}), not "
                        f"model.family={family.name}")
    if plan.tensor_parallel_size > 1 or plan.pipeline_parallel_size > 1:
        problems.append(f"objective=distill runs with data parallelism and ZeRO stages 0-3 only (the teacher is "
                        f"replicated on every rank), not parallel.tensor_model_parallel_size="
                        f"{plan.tensor_parallel_size} x parallel.pipeline_model_parallel_size="
                        f"{plan.pipeline_parallel_size}; set both to 1")
    cp = getattr(plan, "context_parallel_size", 1)
    if cp > 1:  # each rank holds a chunk of the sequence, the teacher's logits and labels the whole of it
        problems.append(f"objective=distill runs on whole sequences, not parallel.context_parallel_size={cp}; set it "
                        "to 1")
    if problems:
        raise ConfigError("; ".join(problems))
    teacher = find_teacher(d.teacher)
    if teacher.family != family.name:
        raise ConfigError(f"{teacher.describe()} cannot teach a model.family={family.name} student: distillation "
                          f"matches the two models' predictions position by position, so both must be {family.name} "
                          f"models (or both {teacher.family})")
    check_tokenizers(tokenizer.path, teacher)
    n_tok = tokenizer.vocab_size or 0
    if min(args.vocab_size, teacher.args.vocab_size) < n_tok:
        raise ConfigError(f"the teacher has {teacher.args.vocab_size} output logits, the student {args.vocab_size}, "
                          f"the tokenizer {n_tok} tokens: both need a logit per token")
    if d.cosine_weight > 0 and teacher.args.hidden_size != args.hidden_size:
        raise ConfigError(f"distill.cosine_weight={d.cosine_weight} compares hidden states, which needs the student's "
                          f"model.hidden_size={args.hidden_size} to equal the teacher's ({teacher.args.hidden_size}, "
                          f"{teacher.describe()}); set distill.cosine_weight=0 or match the widths, as DistilBERT did")
    return Distiller(teacher, float(d.temperature), float(d.alpha), float(d.cosine_weight),
                     getattr(d.teacher_dtype, "value", d.teacher_dtype))


# ------------------------------------------------------------------------------------------------ training


class Distiller:
    """The distillation objective of one run: the teacher, the weights, and this rank's running sums of the loss
    parts (training micro-batches since the last :meth:`take_parts`)."""

    def __init__(self, source: TeacherSource, temperature: float, alpha: float, cosine_weight: float = 0.0,
                 teacher_dtype: str = "fp32"):
        self.source = source
        self.temperature, self.alpha, self.cosine_weight = temperature, alpha, cosine_weight
        self.teacher_dtype = teacher_dtype
        self.teacher: torch.nn.Module | None = None
        self.student: torch.nn.Module | None = None
        self._reset()

    def _reset(self) -> None:
        self._sums = torch.zeros(3, dtype=torch.float64)  # soft, hard, cos
        self._count = 0
        self._teacher_logits: torch.Tensor | None = None
        self._labels: torch.Tensor | None = None
        self._mask: torch.Tensor | None = None
        self._hidden: dict[str, torch.Tensor] = {}

    def attach(self, student: torch.nn.Module, device: Any, teacher: torch.nn.Module | None = None) -> None:
        """Load the teacher (unless given) and hook it into ``student``: the loss of every training forward with
        labels becomes the distillation loss. The student's parameters and names stay as they are."""
        self.teacher = teacher if teacher is not None else load_teacher(self.source, self.teacher_dtype, device)
        self.student = student
        self._base_loss = student.loss_fn
        student.loss_fn = self.loss
        student.register_forward_pre_hook(self._before_forward, with_kwargs=True)
        if self.cosine_weight > 0:
            student.layers[-1].register_forward_hook(self._keep("student"))
            self.teacher.layers[-1].register_forward_hook(self._keep("teacher"))

    def _keep(self, whose: str):
        def hook(module, inputs, output):
            if self.student.training:
                self._hidden[whose] = output[0] if isinstance(output, tuple) else output
        return hook

    def _before_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._teacher_logits = None
        if not module.training or kwargs.get("labels") is None:
            return
        inputs = {k: v for k, v in kwargs.items() if k not in ("labels", "sop_labels")}
        with torch.no_grad():
            self._teacher_logits = self.teacher(*args, **inputs)
        self._labels, self._mask = kwargs["labels"], kwargs.get("attention_mask")

    def loss(self, logits: torch.Tensor, target: torch.Tensor, *a: Any, **kw: Any) -> torch.Tensor:
        """The student's ``loss_fn``: its own (hard) loss, plus the soft and cosine parts while it trains."""
        hard = self._base_loss(logits, target, *a, **kw)
        teacher = self._teacher_logits
        if teacher is None or not self.student.training:
            return hard
        self._teacher_logits = None
        flat = teacher.reshape(-1, teacher.size(-1))
        keep = self._labels.reshape(-1) != IGNORE
        # GPT passes every position's logits (labels -100 ignored), BERT only those with a label
        student = logits[keep] if logits.shape[0] == flat.shape[0] else logits
        vocab = min(student.size(-1), flat.size(-1))  # models padded to other multiples: the shared logits
        soft = soft_loss(student[:, :vocab], flat[keep][:, :vocab], self.temperature)
        total = self.alpha * hard + (1.0 - self.alpha) * soft
        cos = torch.zeros((), device=hard.device)
        if self.cosine_weight > 0:
            cos = cosine_loss(self._hidden.pop("student"), self._hidden.pop("teacher"), self._mask)
            total = total + self.cosine_weight * cos
        self._sums += torch.stack([soft.detach(), hard.detach(), cos.detach()]).double().cpu()
        self._count += 1
        return total

    def take_parts(self) -> tuple[list[float], int]:
        """([soft, hard, cos] summed over this rank's training micro-batches since the last call, their count)."""
        sums, n = self._sums.tolist(), self._count
        self._sums.zero_()
        self._count = 0
        return sums, n

    def teacher_eval_loss(self, batches, device: torch.device) -> float:
        """The teacher's own loss (its family's objective) on ``batches``, mean over them."""
        total, n = 0.0, 0
        with torch.no_grad():
            for batch in batches:
                total += float(self.teacher(**{k: v.to(device) for k, v in batch.items()}))
                n += 1
        self._hidden.clear()  # what the cosine hooks kept of these batches
        return total / max(n, 1)

    def callbacks(self) -> list[Callback]:
        return [DistillCallback(self)]


class DistillCallback(Callback):
    """Into the step's record (after the Evaluator, before the MetricsLogger): ``distill_soft_loss``,
    ``distill_hard_loss`` (and ``distill_cos_loss``), the mean over the data-parallel ranks of the logged step's
    micro-batches; on evaluation steps ``teacher_val_loss`` (and per source ``teacher_val_loss/<source>``),
    computed at the first evaluation on the Evaluator's samples and reused (the teacher does not change)."""

    order = 25

    def __init__(self, distiller: Distiller):
        self.distiller = distiller
        self.teacher_val: dict[str, float] | None = None
        self.teacher_val_total: float | None = None

    def on_step_end(self, trainer: "Trainer", out: StepOutput) -> None:
        from pretrain.distributed import all_reduce_mean

        sums, n = self.distiller.take_parts()
        if not out.record:  # not a logged step (the same steps on every rank)
            return
        soft, hard, cos = all_reduce_mean([x / max(n, 1) for x in sums], trainer.device, trainer.dp_group)
        out.record.update({"distill_soft_loss": soft, "distill_hard_loss": hard})
        if self.distiller.cosine_weight > 0:
            out.record["distill_cos_loss"] = cos
        if "val_loss" in out.record:
            self._teacher_validation(trainer, out)

    def _teacher_validation(self, trainer: "Trainer", out: StepOutput) -> None:
        from pretrain.distributed import all_reduce_mean
        from pretrain.evaluator import weighted_total

        if self.teacher_val is None:
            losses = [self.distiller.teacher_eval_loss(trainer.loader(ds, trainer.num_eval_samples, 0), trainer.device)
                      for ds in trainer.data.valid_sources.values()]
            self.teacher_val = dict(zip(trainer.data.valid_sources,
                                        all_reduce_mean(losses, trainer.device, trainer.dp_group)))
            self.teacher_val_total = weighted_total(self.teacher_val, trainer.data.valid_weights)
            log.info("teacher validation loss %.4f (the student's at step %d: %.4f)", self.teacher_val_total,
                     out.step, out.record["val_loss"])
        out.record["teacher_val_loss"] = self.teacher_val_total
        if len(self.teacher_val) > 1:
            out.record.update({f"teacher_val_loss/{k}": v for k, v in self.teacher_val.items()})

    def on_train_end(self, trainer: "Trainer", summary: dict[str, Any]) -> None:
        summary["teacher_val_loss"] = self.teacher_val_total
