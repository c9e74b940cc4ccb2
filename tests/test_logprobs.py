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


def accelerate_mixed_precision(model):
    """What ``accelerator.prepare`` does to a model under ``mixed_precision=bf16`` (accelerate's own
    helpers): its forward runs under bf16 autocast and its outputs come back cast to fp32, the hidden
    states included, so the chunked output layer sees fp32 hidden states whatever the weights' dtype."""
    from accelerate.utils import convert_outputs_to_fp32

    forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
    model.forward = convert_outputs_to_fp32(forward)
    return model


def test_chunked_under_bf16_mixed_precision_is_the_full_paths_computation():
    """accelerate bf16 with bf16 weights (model.dtype=bfloat16) once failed here: fp32 hidden states
    against a bf16 output layer. With fp32 weights the output layer must compute in bf16, as the full
    path's does inside the forward's autocast (an fp32 head is several times slower on a GPU): the
    log-probs equal the full path's, and every gradient is as close to the fp32 model's as the full
    path's is (the weight gradient is summed over chunks in fp32)."""
    batch = random_batch(97, seed=5)

    def run(model, chunk, autocast):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):  # Parallel.autocast() in the learner
            logp, _ = token_logprobs(model, batch, chunk_elements=chunk)
        weights = torch.linspace(-1.0, 2.0, logp.numel()).view_as(logp)
        ((logp * weights) * batch.completion_mask).sum().backward()  # outside autocast, as the learner's backward
        return logp.detach(), {n: p.grad for n, p in model.named_parameters()}

    _, exact = run(tiny_qwen(tie=True), None, autocast=False)
    for weights in (torch.bfloat16, torch.float32):
        model = accelerate_mixed_precision(tiny_qwen(tie=True).to(weights))
        full_logp, full_grads = run(model, None, autocast=True)
        chunk_logp, chunk_grads = run(model, 97 * 2, autocast=True)
        torch.testing.assert_close(chunk_logp, full_logp, atol=1e-5, rtol=0, msg=str(weights))
        for name, grad in exact.items():
            assert chunk_grads[name].dtype == weights
            error = lambda g: float((g.float() - grad).norm() / grad.norm())  # noqa: E731
            assert error(chunk_grads[name]) <= max(1.25 * error(full_grads[name]), 1e-3), (weights, name)
        # Outside autocast (evaluation, scripts): no dtype clash, the weights' dtype decides.
        with torch.no_grad():
            plain, _ = token_logprobs(model, batch)
        assert plain.dtype == torch.float32 and torch.isfinite(plain).all()
