"""The HF sampler returns what the trainer needs: layout, finish reasons and exact log-probs."""

from __future__ import annotations

import torch

from conftest import compose
from rlreason.batching import make_batch, token_logprobs
from rlreason.modeling import build_char_tokenizer, build_tiny_model
from rlreason.sampling import HFSampler
from rlreason.tasks.arithmetic import ALPHABET


def _tiny():
    cfg = compose("debug=true", "sampler.max_new_tokens=12")
    tokenizer = build_char_tokenizer(ALPHABET)
    model = build_tiny_model(cfg.model, tokenizer, seed=0)
    return cfg, model, tokenizer


def test_log_probs_match_a_fresh_forward_pass():
    cfg, model, tokenizer = _tiny()
    sampler = HFSampler(model, tokenizer, cfg.sampler)
    torch.manual_seed(0)
    out = sampler.generate(["12+34=", "0007+9999="], n=3, return_logprobs=True, batch_size=4)
    batch = make_batch(out.prompt_ids, out.completion_ids, tokenizer.pad_token_id)
    with torch.no_grad():
        logp, _ = token_logprobs(model, batch)
    for i, ids in enumerate(out.completion_ids):
        assert len(out.logprobs[i]) == len(ids)
        assert torch.allclose(logp[i, : len(ids)], torch.tensor(out.logprobs[i]), atol=1e-4)


def test_rows_are_grouped_by_prompt_and_finish_reasons_are_right():
    cfg, model, tokenizer = _tiny()
    sampler = HFSampler(model, tokenizer, cfg.sampler)
    prompts = ["1+1=", "22+22=", "333+333="]
    out = sampler.generate(prompts, n=2)
    assert len(out) == 6
    for i, prompt_ids in enumerate(out.prompt_ids):
        assert tokenizer.decode(prompt_ids) == prompts[i // 2]
    for ids, finished, text in zip(out.completion_ids, out.finished, out.texts):
        assert finished == (ids[-1] == tokenizer.eos_token_id)
        assert finished or len(ids) == cfg.sampler.max_new_tokens
        assert tokenizer.eos_token_id not in ids[:-1]
        assert text == tokenizer.decode(ids, skip_special_tokens=True)


def test_greedy_is_deterministic_and_chunking_does_not_change_it():
    cfg, model, tokenizer = _tiny()
    sampler = HFSampler(model, tokenizer, cfg.sampler)
    prompts = ["1234+5678=", "9+9=", "0000+0001="]
    whole = sampler.generate(prompts, n=1, greedy=True)
    chunked = sampler.generate(prompts, n=1, greedy=True, batch_size=1)
    assert whole.texts == chunked.texts


def test_evaluation_reports_the_mean_and_spread_of_completion_lengths():
    """An untrained model's samples stop at random points, so their lengths differ: the evaluation's
    mean and population sd are those of the completions the same sampling call gives (same seed)."""
    import statistics

    from rlreason.evaluation import evaluate_task
    from rlreason.tasks import build_task

    cfg, model, tokenizer = _tiny()
    sampler = HFSampler(model, tokenizer, cfg.sampler)
    task = build_task(cfg.task)
    examples = task.test_examples()[:16]
    eval_cfg = compose("debug=true", "eval.greedy=false", "eval.samples_per_problem=2").eval
    torch.manual_seed(0)
    metrics, _ = evaluate_task(sampler, task, examples, eval_cfg)
    torch.manual_seed(0)
    out = sampler.generate([e.prompt for e in examples], n=2, greedy=False, batch_size=eval_cfg.batch_size)
    lengths = [len(ids) for ids in out.completion_ids]
    assert len(set(lengths)) > 1, lengths  # else the spread checks nothing
    assert metrics["eval/sampled_mean_length"] == statistics.mean(lengths)
    assert abs(metrics["eval/sampled_length_std"] - statistics.pstdev(lengths)) < 1e-9
