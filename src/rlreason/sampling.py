"""The sampler interface and its transformers backend.

Every backend returns the same ``Completions`` (token ids, text, finish reason, optional
log-probs), so the trainer never asks which backend it has. Rows are laid out group by group:
prompt i's j-th sample is row ``i * n + j``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import GenerationConfig


@dataclass
class Completions:
    prompt_ids: list[list[int]]  # the prompt of each row, unpadded
    completion_ids: list[list[int]]  # generated ids, up to and including the end-of-sequence token
    texts: list[str]  # decoded completions, special tokens removed
    finished: list[bool]  # True: stopped at end-of-sequence; False: truncated at max_new_tokens
    logprobs: list[list[float]] | None = None  # per generated token, under the untempered policy

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_completion_tokens(self) -> int:
        return sum(len(c) for c in self.completion_ids)

    def select(self, rows: list[int]) -> "Completions":
        """A subset of rows, in the given order."""
        return Completions(
            prompt_ids=[self.prompt_ids[i] for i in rows],
            completion_ids=[self.completion_ids[i] for i in rows],
            texts=[self.texts[i] for i in rows],
            finished=[self.finished[i] for i in rows],
            logprobs=None if self.logprobs is None else [self.logprobs[i] for i in rows],
        )


class Sampler(ABC):
    """Generates completions from the current policy."""

    # True: the backend returns its own log-probs at no real cost (vLLM), so every training step asks
    # for them and logs the sampler-trainer gap (rollout/logp_gap_*), where a weight-sync fault shows.
    returns_logprobs: ClassVar[bool] = False

    @abstractmethod
    def generate(
        self, prompts: list[str], n: int, greedy: bool = False, return_logprobs: bool = False, batch_size: int | None = None
    ) -> Completions:
        """``n`` completions per prompt; ``batch_size`` caps the sequences per generation call."""

    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Make the next ``generate`` sample from ``policy``'s current weights."""

    def close(self) -> None:
        """Free the backend's resources."""


class HFSampler(Sampler):
    """transformers ``generate`` on the policy itself: weights are always current."""

    def __init__(self, model: Any, tokenizer: Any, sampler_cfg: Any):
        self.model, self.tokenizer, self.cfg = model, tokenizer, sampler_cfg
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id

    def _generation_config(self, greedy: bool, return_logprobs: bool) -> GenerationConfig:
        # A fresh config, so a hub model's own generation defaults (repetition penalty, ...) never
        # change the distribution RL samples from.
        c = self.cfg
        kwargs: dict[str, Any] = dict(
            max_new_tokens=c.max_new_tokens,
            pad_token_id=self.pad_id,
            eos_token_id=self.eos_id,
            do_sample=not greedy,
            return_dict_in_generate=True,
            output_logits=return_logprobs,
        )
        if not greedy:
            kwargs.update(temperature=c.temperature, top_k=c.top_k or None, top_p=c.top_p)
        return GenerationConfig(**kwargs)

    @torch.inference_mode()
    def generate(
        self, prompts: list[str], n: int, greedy: bool = False, return_logprobs: bool = False, batch_size: int | None = None
    ) -> Completions:
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        rows = [ids for ids in encoded for _ in range(n)]
        step = batch_size or len(rows)
        out = Completions(prompt_ids=[], completion_ids=[], texts=[], finished=[], logprobs=[] if return_logprobs else None)
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rows), step):
                self._generate_chunk(rows[start : start + step], greedy, return_logprobs, out)
        finally:
            self.model.train(was_training)
        return out

    def _generate_chunk(self, rows: list[list[int]], greedy: bool, return_logprobs: bool, out: Completions) -> None:
        device = next(self.model.parameters()).device
        p_len = max(len(r) for r in rows)
        input_ids = torch.tensor([[self.pad_id] * (p_len - len(r)) + r for r in rows], device=device)
        attention_mask = torch.tensor([[0] * (p_len - len(r)) + [1] * len(r) for r in rows], device=device)
        result = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            generation_config=self._generation_config(greedy, return_logprobs),
        )
        generated = result.sequences[:, p_len:]
        token_logprobs = None
        if return_logprobs:
            logits = torch.stack(result.logits, dim=1).float()  # [B, T, V], before any sampling warper
            token_logprobs = torch.log_softmax(logits, -1).gather(-1, generated.unsqueeze(-1)).squeeze(-1)
        for i, prompt in enumerate(rows):
            ids = generated[i].tolist()
            finished = self.eos_id in ids
            if finished:
                ids = ids[: ids.index(self.eos_id) + 1]
            out.prompt_ids.append(prompt)
            out.completion_ids.append(ids)
            out.texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
            out.finished.append(finished)
            if out.logprobs is not None and token_logprobs is not None:
                out.logprobs.append(token_logprobs[i, : len(ids)].tolist())


def build_sampler(sampler_cfg: Any, model: Any, tokenizer: Any, model_path: str | None = None, seed: int = 0) -> Sampler:
    """The backend a ``sampler=`` config names by ``_target_`` (a Sampler class: this module's
    HFSampler, rlreason.vllm_sampler.VLLMSampler, or one of your own). Built as
    ``cls(model, tokenizer, cfg)``, plus ``model_path`` (the policy's base directory or hub id) and
    ``seed`` where its constructor takes them (engines that load the model themselves)."""
    import inspect

    from rlreason.errors import ConfigError
    from rlreason.registry import import_object

    cls = import_object(sampler_cfg._target_, "sampler._target_")
    if not (isinstance(cls, type) and issubclass(cls, Sampler)):
        raise ConfigError(f"sampler._target_={sampler_cfg._target_!r} is not a subclass of rlreason.sampling.Sampler")
    parameters = inspect.signature(cls.__init__).parameters
    extra = {k: v for k, v in (("model_path", model_path), ("seed", seed)) if k in parameters}
    return cls(model, tokenizer, sampler_cfg, **extra)
