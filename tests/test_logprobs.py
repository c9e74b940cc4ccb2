"""The chunked log-prob path (the default) equals the full one: values, entropies and gradients."""

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rlreason.batching import make_batch, token_logprobs


def tiny_qwen(vocab: int = 97, tie: bool = False) -> Qwen2ForCausalLM:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    return Qwen2ForCausalLM(cfg).to(torch.float32)


def random_batch(vocab: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    lens_p = [5, 9, 3, 7]
    lens_c = [6, 11, 1, 8]
    prompts = [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lens_p]
    completions = [torch.randint(2, vocab, (n,), generator=g).tolist() for n in lens_c]
    return make_batch(prompts, completions, pad_id=0)


def logprobs_and_grads(model, batch, chunk):
    model.zero_grad(set_to_none=True)
    logp, entropy = token_logprobs(model, batch, with_entropy=True, chunk_elements=chunk)
    weights = torch.linspace(-1.0, 2.0, logp.numel()).view_as(logp)  # a loss that weighs every position differently
    ((logp * weights) * batch.completion_mask).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return logp.detach(), entropy, grads


def test_chunked_equals_full_values_and_gradients():
    for tie in (False, True):
        model = tiny_qwen(tie=tie)
        batch = random_batch(97)
        full_logp, full_ent, full_grads = logprobs_and_grads(model, batch, None)
        # 97 * 3 elements: 3 positions per chunk, so chunks split rows and cross row boundaries.
        chunk_logp, chunk_ent, chunk_grads = logprobs_and_grads(model, batch, 97 * 3)
        assert chunk_logp.shape == full_logp.shape == batch.completion_ids.shape
        torch.testing.assert_close(chunk_logp, full_logp, atol=1e-5, rtol=0)
        torch.testing.assert_close(chunk_ent, full_ent, atol=1e-5, rtol=0)
        assert not chunk_ent.requires_grad
        assert full_grads.keys() == chunk_grads.keys()
        for name in full_grads:
            torch.testing.assert_close(chunk_grads[name], full_grads[name], atol=1e-5, rtol=1e-4, msg=name)
        head = "lm_head.weight" if not tie else "model.embed_tokens.weight"
        assert float(full_grads[head].abs().sum()) > 0


def test_chunked_is_default_and_matches_under_no_grad():
    model = tiny_qwen()
    batch = random_batch(97, seed=3)
    with torch.no_grad():
        default, _ = token_logprobs(model, batch)
        full, _ = token_logprobs(model, batch, chunk_elements=None)
    torch.testing.assert_close(default, full, atol=1e-5, rtol=0)


def test_chunked_through_a_wrapper_with_module():
    """A DDP-style wrapper (``.module``): the output layer is found under it, the forward goes through it."""

    class Wrapper(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module
            self.calls = 0

        def forward(self, **kw):
            self.calls += 1
            return self.module(**kw)

    model = tiny_qwen()
    wrapped = Wrapper(model)
    batch = random_batch(97, seed=4)
    with torch.no_grad():
        got, _ = token_logprobs(wrapped, batch, chunk_elements=97 * 5)
        want, _ = token_logprobs(model, batch, chunk_elements=None)
    assert wrapped.calls == 1
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
