"""The vLLM backend's settings that need no engine: its dtype, push-check tolerance, context length and
the staleness fingerprint (these run in the main venv; the engine's own tests are in test_vllm_sampler.py)."""

import pytest
import torch
from omegaconf import OmegaConf
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlreason.errors import ConfigError
from rlreason.vllm_sampler import (SYNC_CHECK_TOLERANCE, engine_dtype, engine_max_model_len, policy_fingerprint,
                                   sync_check_tolerance)


def test_engine_dtype_auto_is_bf16_on_cuda_and_the_policys_elsewhere():
    assert engine_dtype("auto", torch.float32, on_cuda=True) == torch.bfloat16
    assert engine_dtype(None, torch.float32, on_cuda=True) == torch.bfloat16  # a config without the field
    assert engine_dtype("auto", torch.float32, on_cuda=False) == torch.float32
    assert engine_dtype("float16", torch.float32, on_cuda=True) == torch.float16
    with pytest.raises(ConfigError, match="sampler.dtype='int8'"):
        engine_dtype("int8", torch.float32, on_cuda=True)


def test_push_check_tolerance_follows_the_coarser_dtype():
    assert sync_check_tolerance(torch.float32, torch.float32) == SYNC_CHECK_TOLERANCE[torch.float32]
    assert sync_check_tolerance(torch.bfloat16, torch.float32) == SYNC_CHECK_TOLERANCE[torch.bfloat16]
    assert sync_check_tolerance(torch.float32, torch.bfloat16) == SYNC_CHECK_TOLERANCE[torch.bfloat16]


def test_max_model_len_is_the_budget_not_the_models_32k():
    model_config = Qwen2Config(max_position_embeddings=32768)
    assert engine_max_model_len(OmegaConf.create({"max_new_tokens": 512}), model_config) == 1024 + 512
    assert engine_max_model_len(OmegaConf.create({"max_new_tokens": 512, "max_model_len": 4096}), model_config) == 4096
    small = Qwen2Config(max_position_embeddings=128)
    assert engine_max_model_len(OmegaConf.create({"max_new_tokens": 64}), small) == 128


def test_fingerprint_sees_fused_steps_data_writes_and_loads():
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    first = policy_fingerprint(model)
    assert torch.equal(first, policy_fingerprint(model))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)  # leaves tensor versions alone
    model(input_ids=torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 3]])).loss.backward()
    optimizer.step()
    stepped = policy_fingerprint(model)
    assert not torch.equal(first, stepped)
    model.model.norm.weight.data.mul_(1.01)
    scaled = policy_fingerprint(model)
    assert not torch.equal(stepped, scaled)
    model.load_state_dict({k: v * 0.5 for k, v in model.state_dict().items()})
    assert not torch.equal(scaled, policy_fingerprint(model))
