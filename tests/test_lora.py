"""LoRA groundwork: adapters via peft, a clear error for a bad target name, and the base model as the
reference by disabling the adapters (no second copy of the weights)."""

import copy

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlreason.batching import make_batch, token_logprobs
from rlreason.errors import ConfigError
from rlreason.modeling import apply_lora, reference_via_disabled_adapters

LORA = {"rank": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}


def tiny() -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=60, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True))


def batch():
    return make_batch([[3, 4, 5], [6, 7]], [[8, 9, 10, 11], [12, 13]], pad_id=0)


def test_rank_zero_is_the_model_itself():
    model = tiny()
    assert apply_lora(model, {**LORA, "rank": 0}) is model


def test_a_bad_target_name_is_one_line_listing_the_models_modules():
    with pytest.raises(ConfigError) as err:
        apply_lora(tiny(), {**LORA, "target_modules": ["q_proj", "query"]})
    message = str(err.value)
    assert "\n" not in message and "['query']" in message
    assert all(name in message for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"))


def test_only_adapters_train_and_the_disabled_adapters_give_the_base_models_logprobs():
    base = tiny()
    frozen_copy = copy.deepcopy(base)
    policy = apply_lora(base, LORA)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(3):  # training moves the adapters (lora_B starts at zero)
        logp, _ = token_logprobs(policy, batch())  # the chunked path, through peft's wrapper
        (-(logp * batch().completion_mask).sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        want, _ = token_logprobs(frozen_copy, batch(), chunk_elements=None)
        trained, _ = token_logprobs(policy, batch())
    with reference_via_disabled_adapters(policy) as reference:
        got, _ = token_logprobs(reference, batch())
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert float((trained - want).abs().max()) > 1e-3  # the adapters did change the policy
    with torch.no_grad():  # and are back on after the block
        torch.testing.assert_close(token_logprobs(policy, batch())[0], trained)
