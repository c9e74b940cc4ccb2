"""Token batches for training forwards: prompts left-padded, completions right-padded.

Every completion then starts at the same column, so the model only computes logits for the
completion positions (``logits_to_keep``), and position ids follow the attention mask exactly
as they do during generation, so a training forward reproduces the sampler's log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TokenBatch:
    input_ids: torch.Tensor  # [B, P + C]
    attention_mask: torch.Tensor  # [B, P + C]
    position_ids: torch.Tensor  # [B, P + C]
    completion_mask: torch.Tensor  # [B, C], 1.0 on real completion tokens
    completion_ids: torch.Tensor  # [B, C]

    @property
    def num_tokens(self) -> int:
        """Real (non-pad) tokens in the batch: what a forward pass actually has to process."""
        return int(self.attention_mask.sum())


def make_batch(prompts: list[list[int]], completions: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> TokenBatch:
    """Stack prompt and completion ids into one padded batch."""
    p_len = max(len(p) for p in prompts)
    c_len = max(1, max(len(c) for c in completions))
    rows, masks, cmask = [], [], []
    for p, c in zip(prompts, completions):
        rows.append([pad_id] * (p_len - len(p)) + list(p) + list(c) + [pad_id] * (c_len - len(c)))
        masks.append([0] * (p_len - len(p)) + [1] * (len(p) + len(c)) + [0] * (c_len - len(c)))
        cmask.append([1.0] * len(c) + [0.0] * (c_len - len(c)))
    input_ids = torch.tensor(rows, dtype=torch.long, device=device)
    attention_mask = torch.tensor(masks, dtype=torch.long, device=device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return TokenBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        completion_mask=torch.tensor(cmask, dtype=torch.float32, device=device),
        completion_ids=input_ids[:, p_len:],
    )


# The chunked log-prob path computes at most this many logits at once (fp32 elements), so
# the [B, C, vocab] logits of a whole micro-batch never exist together (2**24 fp32 elements: 64 MB); with a
# small vocabulary the whole batch is one chunk. None: the full path (every completion position's logits at once), kept for comparison.
LOGPROB_CHUNK_ELEMENTS: int | None = 2**24


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model under DDP / accelerate wrappers (``.module``); a peft model is left as it is."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


def token_logprobs(model: torch.nn.Module, batch: TokenBatch, with_entropy: bool = False,
                   chunk_elements: int | None | str = "default") -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the completion tokens under ``model`` ([B, C]) and, optionally, the entropy
    of the model's next-token distribution at each completion position (no gradient).

    By default the model returns only its final hidden states, and the output layer, logsumexp and
    gather run over chunks of positions (``_ChunkedHeadLogprobs``, which recomputes a chunk's logits in the
    backward): neither the forward nor
    the backward keeps the fp32 logits of more than one chunk (at Qwen2.5's vocabulary of 151,936, a
    micro-batch's full logits are gigabytes). ``chunk_elements=None`` takes the full path.
    """
    chunk = LOGPROB_CHUNK_ELEMENTS if chunk_elements == "default" else chunk_elements
    if chunk is None:
        return _full_logprobs(model, batch, with_entropy)
    return _chunked_logprobs(model, batch, with_entropy, int(chunk))


def _full_logprobs(model: torch.nn.Module, batch: TokenBatch, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    c_len = batch.completion_ids.shape[1]
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=c_len + 1,
        use_cache=False,
    ).logits[:, :-1].float()
    return _logprobs_from_logits(logits, batch.completion_ids, with_entropy)


def _logprobs_from_logits(logits: torch.Tensor, ids: torch.Tensor, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    log_norm = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - log_norm
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            entropy = log_norm - (probs * logits).sum(-1)
    return logp, entropy


class _ChunkedHeadLogprobs(torch.autograd.Function):
    """Output layer + log-softmax + gather over chunks of rows, keeping no logits between forward and backward.

    Forward: per chunk, logits -> log-probs, log-normalisers (kept: [N] floats) and entropies. Backward: per
    chunk, the logits are recomputed, d logp / d logits = onehot - softmax, and the hidden-state gradient is
    written in place and the weight gradient accumulated in one fp32 buffer (no per-chunk [vocab, H] gradients
    in fp32; one rounding to the weight's dtype at the end, as the full path's single matmul has).

    The output layer's matmuls run in the autocast dtype when the call is made under autocast (as the
    full path's would inside the model's forward, which under accelerate has ended by the time the hidden
    states come back, cast to fp32), else in the weight's dtype; softmax and logsumexp in fp32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, rows, with_entropy):  # noqa: ANN001
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        n = hidden.shape[0]
        logp = hidden.new_empty(n, dtype=torch.float32)
        log_norm = hidden.new_empty(n, dtype=torch.float32)
        entropy = hidden.new_empty(n if with_entropy else 0, dtype=torch.float32)
        for s in range(0, n, rows):
            logits = torch.nn.functional.linear(hidden[s:s + rows].to(dtype), w, b).float()
            lse = torch.logsumexp(logits, dim=-1)
            log_norm[s:s + rows] = lse
            logp[s:s + rows] = logits.gather(-1, ids[s:s + rows].unsqueeze(-1)).squeeze(-1) - lse
            if with_entropy:
                entropy[s:s + rows] = lse - (torch.softmax(logits, dim=-1) * logits).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, ids, log_norm)
        ctx.rows, ctx.dtype = rows, dtype
        ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):  # noqa: ANN001
        hidden, weight, bias, ids, log_norm = ctx.saved_tensors
        rows, dtype = ctx.rows, ctx.dtype
        w, b = weight.to(dtype), None if bias is None else bias.to(dtype)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b and bias is not None else None
        for s in range(0, hidden.shape[0], rows):
            h = hidden[s:s + rows].to(dtype)
            g = grad_logp[s:s + rows].float()
            logits = torch.nn.functional.linear(h, w, b).float()
            grad_logits = torch.exp(logits - log_norm[s:s + rows].unsqueeze(-1)).mul_(-g.unsqueeze(-1))
            grad_logits.scatter_add_(-1, ids[s:s + rows].unsqueeze(-1), g.unsqueeze(-1))
            del logits
            if grad_b is not None:
                grad_b += grad_logits.sum(0)
            grad_logits = grad_logits.to(dtype)
            if grad_h is not None:
                if grad_h.dtype == dtype:
                    torch.mm(grad_logits, w, out=grad_h[s:s + rows])
                else:
                    grad_h[s:s + rows] = torch.mm(grad_logits, w)
            if grad_w is not None:
                if dtype == torch.float32:
                    grad_w.addmm_(grad_logits.t(), h)
                else:  # a [vocab, H] product in the low dtype, summed in fp32
                    grad_w += torch.mm(grad_logits.t(), h)
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)
        grad_b = None if grad_b is None else grad_b.to(bias.dtype)
        return grad_h, grad_w, grad_b, None, None, None


def _chunked_logprobs(model: torch.nn.Module, batch: TokenBatch, with_entropy: bool, chunk_elements: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    b, c_len = batch.completion_ids.shape
    # Through the wrapper's own forward (DDP registers its gradient hooks there), asking for one position's
    # logits only; the last hidden state is the final norm's output, what the output layer reads.
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=1,
        use_cache=False,
        output_hidden_states=True,
    )
    hidden = out.hidden_states[-1][:, -(c_len + 1):-1]  # the positions that predict each completion token
    del out
    head = unwrap_model(model).get_output_embeddings()
    hidden = hidden.reshape(b * c_len, hidden.shape[-1])
    ids = batch.completion_ids.reshape(b * c_len)
    rows = max(1, chunk_elements // head.weight.shape[0])
    logp, entropy = _ChunkedHeadLogprobs.apply(hidden, head.weight, head.bias, ids, rows, with_entropy)
    return logp.view(b, c_len), entropy.view(b, c_len) if with_entropy else None
