"""Export a training checkpoint as a Hugging Face model directory.

    python -m pretrain.export runs/bert_tiny hf/bert_tiny                 # the run's latest checkpoint
    python -m pretrain.export runs/x/checkpoints/step_000100 hf/x --dtype bf16
    python -m pretrain.export runs/gpt_tiny hf/gpt --arch GPT2LMHeadModel  # refuse unless it fits that class

The source is a run directory, its ``checkpoints/`` folder (the ``latest`` tag) or one tag folder. The
weights come from the checkpoint as training left them, whatever the ZeRO stage: stage 0 keeps the whole
module in ``mp_rank_00_model_states.pt``; stages 1-3 are consolidated from the fp32 optimizer partitions by
DeepSpeed's own ``zero_to_fp32`` helpers. The output (``model.safetensors``, ``config.json``, tokenizer
files made by ``PreTrainedTokenizerFast`` from the run's ``tokenizer.json``, with the family's special
tokens) loads offline with ``AutoModel*.from_pretrained(out_dir)`` / ``AutoTokenizer.from_pretrained``.

Needs ``transformers`` (``pip install transformers``, in the ``dev`` extra) for the config and tokenizer
files; the trainer itself does not.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pretrain import checkpoint as ckpt
from pretrain import hf
from pretrain.checkpoint_files import deepspeed_safe_globals
from pretrain.core import safe_load
from pretrain.core.errors import CheckpointError, UserError
from pretrain.parallel import reshard

log = logging.getLogger("pretrain.export")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Source:
    ckpt_dir: Path
    tag: str
    state: dict[str, Any]

    @property
    def tag_dir(self) -> Path:
        return self.ckpt_dir / self.tag


def find_checkpoint(src: str | Path) -> Source:
    """A run directory, a checkpoint folder or a tag folder -> the complete checkpoint it designates."""
    p = Path(src).expanduser().absolute()
    if (p / ckpt.STATE).is_file():
        if not (p / ckpt.COMPLETE).exists():
            raise CheckpointError(f"{p} is an incomplete checkpoint (no {ckpt.COMPLETE} file): its save was interrupted")
        ckpt_dir, tag = p.parent, p.name
    else:
        ckpt_dir = p / "checkpoints" if (p / "checkpoints").is_dir() else p
        tag = ckpt.find_resume_tag(ckpt_dir)
        if tag is None:
            raise CheckpointError(
                f"{src}: no complete checkpoint found (expected a run directory with checkpoints/, a checkpoint "
                f"folder with a '{ckpt.LATEST}' file, or a step_NNNNNN folder)"
            )
    state = ckpt.read_state(ckpt_dir / tag)
    sharded = state.get("tensor_parallel_size", 1) > 1 or state.get("pipeline_parallel_size", 1) > 1
    if sharded and not reshard.exists(ckpt_dir / tag):
        raise CheckpointError(
            f"{ckpt_dir / tag} holds tensor/pipeline-parallel shards (tp {state.get('tensor_parallel_size', 1)}, pp "
            f"{state.get('pipeline_parallel_size', 1)}) and no layout-free copy ({reshard.UNIVERSAL}/, written when "
            "checkpoint.universal=true); resume it with checkpoint.universal=true for one step to export it"
        )
    return Source(ckpt_dir, tag, state)


def model_args(source: Source):
    from pretrain.models import get_family

    family = get_family(source.state.get("family", "gpt"))
    try:
        return family, family.args_type(**source.state["model_args"])
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{source.tag_dir / ckpt.STATE}: model_args do not describe a {family.name} model ({e})") from None


def consolidated_state_dict(source: Source) -> dict[str, torch.Tensor]:
    """The full model state dict of a checkpoint of any ZeRO stage and tp x pp layout, on CPU: from the
    layout-free copy when the checkpoint has one (fp32 master weights), else from DeepSpeed's files."""
    if reshard.exists(source.tag_dir):
        return reshard.full_state_dict(source.tag_dir)
    if source.state.get("engine") == "accelerate":  # torch.distributed.checkpoint's shards, read in this process
        from pretrain.engines.accelerate import dcp_model_weights

        family, args = model_args(source)
        return dcp_model_weights(source.tag_dir, family.build(args).state_dict())
    stage = int(source.state.get("zero_stage") or 0)
    if stage == 0:
        f = source.tag_dir / "mp_rank_00_model_states.pt"
        if not f.is_file():
            raise CheckpointError(f"{f} is missing: not a DeepSpeed ZeRO-0 checkpoint")
        return safe_load.load(f, allowed=deepspeed_safe_globals(), map_location="cpu")["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    with safe_load.weights_only_loads(deepspeed_safe_globals()):  # it calls torch.load(weights_only=False)
        return dict(get_fp32_state_dict_from_zero_checkpoint(str(source.ckpt_dir), tag=source.tag))


def load_model(source: Source):
    """(family, args, our model with the checkpoint's weights, fp32)."""
    family, args = model_args(source)
    model = family.build(args)
    sd = {k: v.float() for k, v in consolidated_state_dict(source).items()}
    own = model.state_dict()
    # zero_to_fp32 returns a tied parameter under one name only: give every alias the shared tensor
    for name, p in own.items():
        if name not in sd:
            for other, q in own.items():
                if other in sd and q.data_ptr() == p.data_ptr():
                    sd[name] = sd[other]
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(
            f"the weights in {source.tag_dir} do not fit the {family.name} model its trainer_state.json describes "
            f"({str(e).splitlines()[0]})"
        ) from None
    return family, args, model.eval()


def tokenizer_specials(arch: str, special: dict[str, int]) -> dict[str, Any]:
    """Keyword arguments of ``PreTrainedTokenizerFast`` naming the family's special tokens (the family's adapter
    says which), refused when the tokenizer lacks one."""
    kw = hf.adapter(arch).tokenizer_specials(arch, special)
    missing = [v for k, v in kw.items() if isinstance(v, str) and v not in special]
    if missing:
        raise CheckpointError(
            f"the tokenizer lacks the special tokens {', '.join(missing)} that {arch} needs; it has "
            f"{', '.join(sorted(special)) or 'none'}"
        )
    return {k: v for k, v in kw.items() if v is not None}


def export(src: str | Path, out_dir: str | Path, arch: str | None = None, dtype: str = "fp32",
           tokenizer: str | Path | None = None, overwrite: bool = False) -> Path:
    """Write the Hugging Face directory of the checkpoint ``src`` to ``out_dir``; returns ``out_dir``."""
    if importlib.util.find_spec("transformers") is None:
        raise UserError(
            "python -m pretrain.export needs the transformers package (pip install transformers, or the project's "
            "[dev] extra) to write config.json and the tokenizer files"
        )
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty; choose another folder or pass --overwrite")
    source = find_checkpoint(src)
    family, args = model_args(source)
    fitting = hf.architecture_for(family.name, args) if arch is None else arch
    why = hf.misfit(fitting, family.name, args)
    if why:
        raise CheckpointError(
            f"cannot export the checkpoint {source.tag_dir} ({family.name}: {hf.describe(args)}) as {fitting}: "
            f"{'; '.join(why)}"
        )
    tok_path = Path(tokenizer) if tokenizer else (Path(source.state["tokenizer"]) if source.state.get("tokenizer") else None)
    if tok_path is None or not tok_path.is_file():
        raise CheckpointError(
            f"the tokenizer {tok_path} named in {source.tag_dir / ckpt.STATE} does not exist; pass --tokenizer PATH "
            "(the tokenizer.json the run trained with)"
        )
    _, _, model = load_model(source)
    write_hf_dir(out, fitting, args, model.state_dict(), tok_path, dtype,
                 info={"source": str(source.tag_dir), "step": source.state.get("step"), "family": family.name,
                       "zero_stage": source.state.get("zero_stage")})
    log.info("exported %s (%s, step %s) to %s as %s", source.tag_dir, family.name, source.state.get("step"), out, fitting)
    return out


def write_hf_dir(out: Path, arch: str, args: Any, state_dict: dict[str, torch.Tensor], tokenizer: Path,
                 dtype: str = "fp32", info: dict[str, Any] | None = None) -> None:
    """``model.safetensors`` + ``config.json`` + tokenizer files of our ``state_dict`` as ``arch``."""
    import transformers
    from safetensors.torch import save_file

    from pretrain.models import TokenizerInfo

    special = TokenizerInfo.load(tokenizer, None, 0).special_tokens
    tok_kwargs = tokenizer_specials(arch, special)
    weights = hf.to_hf(arch, args, state_dict)
    # own storage per tensor: safetensors refuses tensors that share memory
    weights = {k: v.detach().to(DTYPES[dtype]).clone().contiguous() for k, v in weights.items()}
    config = hf.hf_config(arch, args, special)
    config.dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[dtype]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(str(out))
    fixes = hf.adapter(arch).config_fixes(arch, args)  # what transformers writes wrong for this model, if anything
    if fixes:
        cfg_file = out / "config.json"
        cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), **fixes}, indent=2) + "\n")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(tokenizer), model_max_length=args.seq_length, **tok_kwargs)
    tok.save_pretrained(str(out))
    (out / "pretrain_export.json").write_text(json.dumps({**(info or {}), "architecture": arch, "dtype": dtype}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m pretrain.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="run directory, checkpoint folder, or one step_NNNNNN folder")
    ap.add_argument("out_dir", help="the Hugging Face model directory to write")
    ap.add_argument("--arch", choices=sorted(hf.ARCHITECTURES), default=None,
                    help="the transformers class to export as (default: the one the model fits)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    ap.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the one in trainer_state.json)")
    ap.add_argument("--overwrite", action="store_true", help="write into a non-empty out_dir")
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        out = export(a.source, a.out_dir, a.arch, a.dtype, a.tokenizer, a.overwrite)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(out)


if __name__ == "__main__":
    main()
