"""The family registry: each family's own config schema types its presets, the model group's schema is their
union, a key of another family is refused naming its owner, the generic layers (layout checks, Hugging Face
classes) read what the families declare, activation checkpointing applied from outside survives a deepcopy, and
reading the config imports no torch."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from pretrain.core.errors import ConfigError
from pretrain.models import FAMILIES, FAMILY_PACKAGES, ModelConfig, TokenizerInfo, build_model, get_family
from pretrain.models.gpt.model import GPTArgs
from pretrain.models.schema import ModelConfigBase, union_schema

CONF = Path(__file__).resolve().parents[2] / "conf"
PRESETS = sorted(f"{p.parent.name}/{p.stem}" for p in (CONF / "model").glob("*/*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_fits_its_own_familys_schema(preset):
    """A preset holds only keys of its family's schema, of the right types (a BERT key in a GPT preset fails)."""
    folder = preset.split("/")[0]
    raw = OmegaConf.load(CONF / "model" / f"{preset}.yaml")
    assert raw.family == folder
    typed = OmegaConf.merge(OmegaConf.structured(get_family(folder).config_schema), raw)
    assert OmegaConf.get_type(typed) is get_family(folder).config_schema


def test_the_model_group_schema_is_the_union_of_the_families():
    union = {f.name for f in dataclasses.fields(ModelConfig)}
    assert union == set().union(*(f.config_schema.__dataclass_fields__ for f in FAMILIES.values()))
    base = {f.name for f in dataclasses.fields(ModelConfigBase)}
    # each family adds keys only it reads
    assert {"rotary_base"} <= union - base and {"sop", "kv_channels", "target_length"} <= union - base
    assert "sop" not in get_family("gpt").config_schema.__dataclass_fields__

    @dataclasses.dataclass
    class Other(ModelConfigBase):
        rotary_base: int = 3  # GPT's key, another type and default

    with pytest.raises(TypeError, match="model.rotary_base is .* in gpt's schema but .* in other's"):
        union_schema({"gpt": get_family("gpt").config_schema, "other": Other})


def test_a_composed_config_pickles(compose_cfg):
    """The Hydra SLURM launcher pickles the composed config: its model node's type must be importable by name."""
    import pickle

    cfg = compose_cfg("model=t5/tiny")
    back = pickle.loads(pickle.dumps(cfg))
    assert OmegaConf.get_type(back.model) is ModelConfig and back == cfg


@pytest.mark.parametrize("model,override,owner", [("bert/tiny", "model.rotary_base=500000", "gpt"),
                                                  ("gpt/tiny", "model.sop=true", "bert"),
                                                  ("gpt/tiny", "model.kv_channels=32", "t5"),
                                                  ("t5/tiny", "model.mlm_probability=0.3", "bert")])
def test_a_key_of_another_family_is_refused_naming_its_owner(compose_cfg, model, override, owner):
    family = model.split("/")[0]
    m = compose_cfg(f"model={model}").model  # every family's keys at their defaults: accepted
    get_family(family).resolve_args(m, TokenizerInfo(None, 1000, 0))
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}=\S+ is not a key of model.family={family} \(only "
                                          rf"model.family={owner} reads it\)"):
        get_family(family).resolve_args(compose_cfg(f"model={model}", override).model, TokenizerInfo(None, 1000, 0))


def test_the_registry_and_what_the_generic_code_reads_of_it():
    from pretrain import hf

    assert list(FAMILIES) == [p.rsplit(".", 1)[-1] for p in FAMILY_PACKAGES]
    assert hf.ARCHITECTURES == {"GPT2LMHeadModel": "gpt", "LlamaForCausalLM": "gpt", "MixtralForCausalLM": "gpt",
                                "MistralForCausalLM": "gpt", "BloomForCausalLM": "gpt",
                                "BertForMaskedLM": "bert", "T5ForConditionalGeneration": "t5"}
    # pipeline stages, sequence parallelism: declared by the family, read by validate/parallelize/pipeline
    assert [n for n, f in FAMILIES.items() if f.pipeline_unsupported] == ["t5"]
    assert [n for n, f in FAMILIES.items() if f.sequence_parallel is not None] == ["gpt"]
    with pytest.raises(ValueError, match="no pipeline stages for model family 't5': T5's relative-position"):
        get_family("t5").to_pipe_batch({})
    for f in FAMILIES.values():
        assert f.tp_plan and f.args_type is not object and f.config_schema is not ModelConfigBase


def test_reading_the_config_imports_no_torch():
    code = "import sys, pretrain.config, pretrain.models, pretrain.parallel.validate; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=CONF.parent).returncode == 0


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_checkpointing_is_applied_from_outside_and_survives_a_deepcopy(mode):
    """The build wraps the layers / attention cores of the model its family makes: same parameter names, and a
    deepcopy (the benchmark's bare model) runs its own weights, not the original's."""
    args = GPTArgs(vocab_size=64, num_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=4,
                   ffn_hidden_size=64, seq_length=8, activation_checkpointing=True, recompute_granularity=mode)
    torch.manual_seed(0)
    bare = get_family("gpt").make_model(args)
    torch.manual_seed(0)
    model = build_model(args)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in bare.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), bare.state_dict().values()))
    wrapped = model.layers[0] if mode == "full" else model.layers[0].self_attn
    assert type(vars(wrapped)["forward" if mode == "full" else "core"]).__name__ == "Checkpointed"
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    x = torch.randint(0, 64, (2, 8))
    twin.train(), model.train(), bare.train()
    assert torch.equal(model(x, x), bare(x, x))  # recomputation changes no number
    assert not torch.allclose(twin(x, x), model(x, x))  # the copy's wrappers call the copy
    twin_wrapped = twin.layers[0] if mode == "full" else twin.layers[0].self_attn
    assert vars(twin_wrapped)["forward" if mode == "full" else "core"].method.__self__ is twin_wrapped
