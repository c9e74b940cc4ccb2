"""The learner: log-probs, gradient accumulation over micro-batches, and the optimizer step.

Every schedule updates the policy through this one object, so the loss (``rl.policy_loss`` with
the configured ``algorithm.loss_agg``), the micro-batch split, the rollout correction and the
gradient exchange between processes are written once. A schedule only decides which rows go into
which update.
"""

from __future__ import annotations

import logging
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch

from rlreason.batching import make_batch, token_logprobs
from rlreason.distributed import Parallel
from rlreason.loss_agg import LossAggregation, UpdateShape
from rlreason.modeling import Reference
from rlreason.rl import LossStats, policy_loss

log = logging.getLogger(__name__)


def reset_peak_memory(device: torch.device | None) -> None:
    """Start a new peak: the CUDA allocator's (so a step's peak is its own, not model loading's or the last
    evaluation's); a process's peak resident set size cannot be reset, so on a CPU it is the run's so far."""
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gb(device: torch.device | None) -> float:
    """Peak memory since ``reset_peak_memory``: the CUDA allocator's peak on a GPU, else the process's peak
    resident set size (Linux: ru_maxrss, in KiB)."""
    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9


class PhaseTimer:
    """Wall-clock seconds per phase of a step (sampling, reference, forward_backward, ...).

    On CUDA, kernels run asynchronously: the device is synchronised before each clock reading, so a
    phase's time is its own work and not whatever the next phase happens to wait for."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._cuda = device is not None and torch.device(device).type == "cuda"
        self._device = device

    def _sync(self) -> None:
        if self._cuda:
            torch.cuda.synchronize(self._device)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[name] += time.perf_counter() - start


@dataclass
class StepTotals:
    """Sums over a step's micro-batches, turned into means once at the end."""

    loss: float = 0.0
    logp_sum: float = 0.0
    entropy_sum: float = 0.0
    train_tokens: int = 0
    stats: LossStats = field(default_factory=LossStats)
    grad_norms: list[float] = field(default_factory=list)
    logp_gap_sum: float = 0.0  # |trainer - sampler| log-prob over tokens (samplers returning log-probs)
    logp_gap_max: float = 0.0
    logp_gap_tokens: float = 0.0
    optimizer_steps: int = 0
    skipped_steps: int = 0


@dataclass
class UpdateRows:
    """Rows to back-propagate: token ids, advantages, and cached old/reference log-probs."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    advantages: torch.Tensor
    old_logp: list[torch.Tensor] | None = None
    ref_logp: list[torch.Tensor] | None = None
    sampler_logp: list[torch.Tensor] | None = None  # the sampler's own log-probs (rollout correction)
    # Each row's place among the update's rows on this process as sampled, before the selector dropped
    # any (for aggregations whose value depends on the micro-batch split); None: the rows are all sampled.
    slots: list[int] | None = None

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def subset(self, rows: list[int], slots: list[int] | None = None) -> "UpdateRows":
        """These rows; ``slots``: their places in the update they now form (default: the ones they had)."""
        return UpdateRows(
            prompt_ids=[self.prompt_ids[i] for i in rows],
            completion_ids=[self.completion_ids[i] for i in rows],
            advantages=self.advantages[rows],
            old_logp=None if self.old_logp is None else [self.old_logp[i] for i in rows],
            ref_logp=None if self.ref_logp is None else [self.ref_logp[i] for i in rows],
            sampler_logp=None if self.sampler_logp is None else [self.sampler_logp[i] for i in rows],
            slots=slots if slots is not None else (None if self.slots is None else [self.slots[i] for i in rows]),
        )


def chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive slices of ``size`` items (the last may be shorter)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _pad_rows(rows: list[torch.Tensor], length: int) -> torch.Tensor:
    out = torch.zeros(len(rows), length)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


class Learner:
    """Back-propagates rows into the policy and applies the optimizer.

    ``train_model`` is what forwards go through (the DDP/DeepSpeed wrapper, or the policy itself),
    set once ``Parallel.prepare`` has wrapped it. ``reference`` (KL on) gives the reference log-probs: a frozen
    copy of the base model, or the LoRA policy with its adapters disabled (``rlreason.modeling``); None: KL off.
    ``rl`` False (SFT): no KL and no importance ratio.
    """

    def __init__(self, cfg: Any, policy: torch.nn.Module, reference: Reference | None, optimizer: Any, scheduler: Any,
                 sampler: Any, parallel: Parallel, tokenizer: Any, device: torch.device, loss_agg: LossAggregation, rl: bool):
        self.cfg, self.policy, self.reference = cfg, policy, reference
        self.optimizer, self.scheduler, self.sampler = optimizer, scheduler, sampler
        self.parallel, self.tokenizer, self.device = parallel, tokenizer, device
        self.loss_agg, self.rl = loss_agg, rl
        self.train_model: Any = policy
        self.nonfinite_in_row = 0
        self.current_step = 1  # the step being trained (1-based), for messages; the trainer sets it

    def shape(self, rows: int, tokens: int | None) -> UpdateShape:
        """An update's global counts, for the aggregation's denominator."""
        return UpdateShape(rows=rows, tokens=tokens, max_completion_tokens=self.cfg.task.max_completion_tokens,
                           micro_batch_size=self.cfg.trainer.micro_batch_size)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _token_batch(self, rows: UpdateRows, chunk: list[int]):
        return make_batch(
            [rows.prompt_ids[i] for i in chunk], [rows.completion_ids[i] for i in chunk], self.tokenizer.pad_token_id, self.device
        )

    @torch.no_grad()
    def attach_logprobs(self, rows: UpdateRows, timer: PhaseTimer, need_old: bool) -> None:
        """Reference log-probs (KL on) and the sampling policy's log-probs (off-policy), once per row."""
        if self.reference is None and not need_old:
            return
        ref, old = [], []
        for chunk in chunks(list(range(len(rows))), self.cfg.trainer.micro_batch_size):
            with timer.phase("reference" if self.reference is not None else "forward_backward"):
                batch = self._token_batch(rows, chunk)
            lengths = [len(rows.completion_ids[i]) for i in chunk]
            if self.reference is not None:
                with timer.phase("reference"), self.parallel.autocast():
                    ref_logp = self.reference.logprobs(batch)
                ref.extend(ref_logp[j, :n].cpu() for j, n in enumerate(lengths))
            if need_old:  # under the update's autocast (accelerate patches the policy's own forward), so the first ratio is 1
                with timer.phase("forward_backward"), self.parallel.autocast():
                    old_logp, _ = token_logprobs(self.policy, batch)
                old.extend(old_logp[j, :n].cpu() for j, n in enumerate(lengths))
        rows.ref_logp = ref if self.reference is not None else None
        rows.old_logp = old if need_old else None

    def micro_batches(self, rows: UpdateRows) -> list[list[int]]:
        """The rows' micro-batches: by length (less padding) for an aggregation the split does not
        change; for one it does (``sampled_micro_batches``), the sampled micro-batches, each holding
        the rows of its own the selector kept (an emptied one is skipped, but still counted)."""
        size = self.cfg.trainer.micro_batch_size
        if self.loss_agg.sampled_micro_batches and rows.slots is not None:
            split: dict[int, list[int]] = defaultdict(list)
            for i, slot in enumerate(rows.slots):
                split[slot // size].append(i)
            return [split[k] for k in sorted(split)]
        order = sorted(range(len(rows)), key=lambda i: len(rows.prompt_ids[i]) + len(rows.completion_ids[i]))
        return list(chunks(order, size))

    def accumulate_gradients(
        self, rows: UpdateRows, shape: UpdateShape, timer: PhaseTimer, totals: StepTotals, sync: bool = True
    ) -> None:
        """Backprop ``rows`` in micro-batches. ``shape`` (the update's global counts: rows sampled
        before filtering, their completion tokens) gives the aggregation's denominator, which makes
        the gradient independent of the split and of what the filter dropped.
        A denominator not known yet (None) back-propagates numerators: ``rescale_gradients`` follows.
        ``sync`` False: more rows follow before the optimizer step (GRPO's chunks), so processes do
        not exchange gradients yet."""
        denominator = self.loss_agg.denominator(shape) or 1.0
        a, beta = self.cfg.algorithm, self.cfg.kl.beta if self.rl else 0.0
        micro = self.micro_batches(rows)
        n_micro = self.parallel.micro_batches(len(micro), sync)
        for k, chunk in enumerate(micro):
            with timer.phase("forward_backward"):
                batch = self._token_batch(rows, chunk)
                width = batch.completion_ids.shape[1]
                old = None if rows.old_logp is None else _pad_rows([rows.old_logp[i] for i in chunk], width).to(self.device)
                ref = None if rows.ref_logp is None else _pad_rows([rows.ref_logp[i] for i in chunk], width).to(self.device)
                sampled = (None if rows.sampler_logp is None
                           else _pad_rows([rows.sampler_logp[i] for i in chunk], width).to(self.device))
            with timer.phase("forward_backward"), self.parallel.backward_context(self.train_model, sync and k == n_micro - 1):
                with self.parallel.autocast():
                    logp, entropy = token_logprobs(self.train_model, batch, with_entropy=True)
                weights = None
                if sampled is not None:
                    behaviour = logp.detach() if old is None else old  # the policy the sampler should have matched
                    self._log_gap(behaviour, sampled, batch.completion_mask, totals)
                    weights = self._rollout_weights(behaviour, sampled, batch.completion_mask)
                loss, stats = policy_loss(
                    logp, batch.completion_mask, rows.advantages[chunk].to(self.device), denominator,
                    old_logp=old, ref_logp=ref, beta=beta, clip_eps_low=a.clip_eps_low, clip_eps_high=a.clip_eps_high,
                    ratio_level=a.ratio_level if self.rl else "token", token_weights=weights,
                    aggregation=self.loss_agg, shape=shape,
                )
                self.parallel.backward(loss)
            mask = batch.completion_mask
            totals.loss += float(loss.detach())
            totals.logp_sum += float((logp.detach() * mask).sum())
            totals.entropy_sum += float((entropy * mask).sum()) if entropy is not None else 0.0
            totals.train_tokens += batch.num_tokens
            totals.stats += stats
        for k in range(len(micro), n_micro):  # another process has more rows: join its gradient exchange
            self.empty_backward(timer, sync and k == n_micro - 1)

    def rescale_gradients(self, used: UpdateShape, final: UpdateShape, totals: StepTotals) -> None:
        """Where the aggregation's denominator was unknown while back-propagating (``used``), scale
        the accumulated gradient, and the loss it logs, by 1 / its value once known (``final``),
        before clipping."""
        if self.loss_agg.denominator(used) is not None:
            return
        factor = 1.0 / float(self.loss_agg.denominator(final))
        totals.loss *= factor
        for p in self.policy.parameters():
            if p.grad is not None:
                p.grad.mul_(factor)

    def _log_gap(self, trainer_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor, totals: StepTotals) -> None:
        gap = (trainer_logp.detach() - sampler_logp).abs() * mask
        totals.logp_gap_sum += float(gap.sum())
        totals.logp_gap_max = max(totals.logp_gap_max, float(gap.max())) if gap.numel() else totals.logp_gap_max
        totals.logp_gap_tokens += float(mask.sum())

    def _rollout_weights(self, behaviour: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
        """Importance weights trainer / sampler per token: ``tis`` caps them, ``mis`` zeroes tokens above the cap."""
        a = self.cfg.algorithm
        if a.rollout_correction == "none":
            return None
        weights = torch.exp((behaviour - sampler_logp).clamp(max=20.0)) * mask
        if a.rollout_correction == "tis":
            return weights.clamp(max=a.rollout_correction_cap)
        return torch.where(weights <= a.rollout_correction_cap, weights, torch.zeros_like(weights))

    def empty_backward(self, timer: PhaseTimer, sync: bool) -> None:
        """A zero-loss forward/backward on one token: adds nothing to the gradient."""
        eos = self.tokenizer.eos_token_id
        batch = make_batch([[eos]], [[eos]], self.tokenizer.pad_token_id, self.device)
        with timer.phase("forward_backward"), self.parallel.backward_context(self.train_model, sync):
            with self.parallel.autocast():
                logp, _ = token_logprobs(self.train_model, batch)
            self.parallel.backward(logp.sum() * 0.0)

    def optimizer_step(self, timer: PhaseTimer, totals: StepTotals) -> None:
        """Clip and apply the gradient; a non-finite gradient skips the update (and is counted)."""
        with timer.phase("optimizer"):
            norm = self.parallel.clip_grad_norm(self.train_model, self.cfg.optim.max_grad_norm)
            if math.isfinite(norm):
                self.optimizer.step()
                self.sampler.sync_weights(self.policy)  # vLLM: push the new weights (HF: nothing to do)
                self.scheduler.step()
                self.nonfinite_in_row = 0
                totals.grad_norms.append(norm)
                totals.optimizer_steps += 1
            else:
                totals.skipped_steps += 1
                self.nonfinite_in_row += 1
                log.warning("step %d: non-finite loss or gradient, update skipped (%d in a row)", self.current_step,
                            self.nonfinite_in_row)
            self.optimizer.zero_grad(set_to_none=True)

    def sum_over_processes(self, totals: StepTotals) -> None:
        """Turn this process's sums into sums over every process (the gradient norm is already global)."""
        if self.parallel.world_size == 1:
            return
        s = totals.stats
        (totals.loss, totals.logp_sum, totals.entropy_sum, train_tokens, s.tokens, s.kl_sum, s.clipped_tokens,
         totals.logp_gap_sum, totals.logp_gap_tokens) = (
            self.parallel.sum([totals.loss, totals.logp_sum, totals.entropy_sum, totals.train_tokens, s.tokens, s.kl_sum,
                               s.clipped_tokens, totals.logp_gap_sum, totals.logp_gap_tokens])
        )
        totals.train_tokens = int(train_tokens)
        totals.logp_gap_max = max(self.parallel.gather(totals.logp_gap_max))
