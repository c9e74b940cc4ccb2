"""Train a few tiny steps in this process, alone or as one of several under ``accelerate launch``.

``python tests/ddp_worker.py OUT SPEC.json``: SPEC is a JSON list of runs, each a list of Hydra
overrides; run i trains in OUT/i/ and process 0 saves the final weights to OUT/i/weights.pt and,
for every optimizer update, the gradient's norm and its projections on fixed random directions
to OUT/i/gradients.json; each process writes how many empty micro-batches it ran to OUT/i.rankR.json (Adam's update hardly depends on the gradient's scale, so equal weights
alone would not show a gradient that is off by a constant factor).

Sampling and reward are made independent of how prompts are split over processes, so a
2-process run and a 1-process run see the same rollouts and must reach the same weights:
- every prompt is sampled in its own generation call, seeded from (step, prompt);
- the reward is a fixed function of the completion's text (the debug model is too weak to earn
  the task's reward, which would make every advantage zero and the gradient trivially equal).
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import compose  # noqa: E402

from rlreason.sampling import Completions, Sampler  # noqa: E402
from rlreason.trainer import Trainer  # noqa: E402


class PromptSeededSampler(Sampler):
    """Wraps a sampler so that a prompt's completions depend only on the step and the prompt."""

    def __init__(self, inner: Sampler, trainer: Trainer):
        self.inner, self.trainer = inner, trainer

    def generate(self, prompts, n, greedy=False, return_logprobs=False, batch_size=None) -> Completions:
        out = Completions([], [], [], [], [] if return_logprobs else None)
        for prompt in prompts:
            torch.manual_seed(zlib.crc32(prompt.encode()) + 1_000_003 * self.trainer.step)
            one = self.inner.generate([prompt], n, greedy=greedy, return_logprobs=return_logprobs)
            out.prompt_ids += one.prompt_ids
            out.completion_ids += one.completion_ids
            out.texts += one.texts
            out.finished += one.finished
            if out.logprobs is not None:
                out.logprobs += one.logprobs
        return out

    def close(self) -> None:
        self.inner.close()


def text_reward(completion: str, example) -> float:
    """1 for about a third of completions, decided by the text alone."""
    return float(zlib.crc32(completion.encode()) % 3 == 0)


def record_gradients(trainer: Trainer) -> list[list[float]]:
    """Wrap the optimizer step to record [norm, 3 projections] of the (synchronised) gradient."""
    records: list[list[float]] = []
    params = list(trainer.policy.parameters())
    size = sum(p.numel() for p in params)
    directions = torch.randn(3, size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    step = trainer.learner.optimizer_step

    def optimizer_step(timer, totals):
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.detach().flatten().double().cpu() for g in grads])
        records.append([float(flat.norm()), *(directions @ flat).tolist()])
        step(timer, totals)

    trainer.learner.optimizer_step = optimizer_step
    return records


def count_calls(obj, name: str) -> list[int]:
    count = [0]
    method = getattr(obj, name)

    def counted(*args, **kwargs):
        count[0] += 1
        return method(*args, **kwargs)

    setattr(obj, name, counted)
    return count


def main(out: Path, spec: list[list[str]]) -> None:
    for i, overrides in enumerate(spec):
        cfg = compose(*overrides)
        trainer = Trainer(cfg, out / str(i))
        trainer.rollouts.sampler = trainer.evaluator.sampler = PromptSeededSampler(trainer.sampler, trainer)
        trainer.task.score = text_reward
        gradients = record_gradients(trainer)
        empty = count_calls(trainer.learner, "empty_backward")
        trainer.fit()
        (out / f"{i}.rank{trainer.parallel.rank}.json").write_text(json.dumps({"empty_backwards": empty[0]}))
        if trainer.parallel.is_main:
            torch.save({k: v.detach().cpu() for k, v in trainer.policy.state_dict().items()}, out / str(i) / "weights.pt")
            (out / str(i) / "gradients.json").write_text(json.dumps(gradients))


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(Path(sys.argv[2]).read_text()))
