"""The reference model loads in the dtype the policy computes in, frozen."""

import torch
from omegaconf import OmegaConf
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlreason.distributed import Parallel
from rlreason.modeling import load_reference


def test_reference_loads_in_the_training_dtype(tmp_path):
    Qwen2ForCausalLM(Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(tmp_path)
    model_cfg = OmegaConf.create({"dtype": "float32", "attn_implementation": "sdpa", "gradient_checkpointing": False})
    default = load_reference(str(tmp_path), model_cfg)
    assert {p.dtype for p in default.parameters()} == {torch.float32}
    assert not any(p.requires_grad for p in default.parameters()) and not default.training
    mixed = load_reference(str(tmp_path), model_cfg, dtype=torch.bfloat16)  # the autocast dtype under accelerate bf16
    assert {p.dtype for p in mixed.parameters()} == {torch.bfloat16}
    one_process = Parallel()
    assert one_process.compute_dtype is None and one_process.prepare_reference(default) is default
