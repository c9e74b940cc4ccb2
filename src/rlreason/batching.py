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


def token_logprobs(model: torch.nn.Module, batch: TokenBatch, with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of the completion tokens under ``model`` ([B, C]) and, optionally, the entropy
    of the model's next-token distribution at each completion position (no gradient)."""
    c_len = batch.completion_ids.shape[1]
    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        logits_to_keep=c_len + 1,
        use_cache=False,
    ).logits[:, :-1].float()
    log_norm = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, batch.completion_ids.unsqueeze(-1)).squeeze(-1) - log_norm
    entropy = None
    if with_entropy:
        with torch.no_grad():
            probs = torch.softmax(logits, dim=-1)
            entropy = log_norm - (probs * logits).sum(-1)
    return logp, entropy
