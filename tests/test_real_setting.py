"""The real code path (hub-style model directory, benchmark tasks, OOD evaluation, SFT-M traces)
end to end, with a tiny model and a byte-level BPE tokenizer saved to a temporary directory."""

from __future__ import annotations

import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from conftest import SHARED_DATA, compose
from rlreason.cli import run
from rlreason.errors import ModelError
from rlreason.metrics import read_metrics

pytestmark = pytest.mark.skipif(not SHARED_DATA.exists(), reason=f"shared benchmark data not found at {SHARED_DATA}")
GSM8K, MATH500 = SHARED_DATA / "gsm8k", SHARED_DATA / "math500"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 'hub model' on disk: Qwen2 config + weights + a BPE tokenizer trained on GSM8K text."""
    texts = [json.loads(line)["question"] for line in (GSM8K / "train.jsonl").read_text().splitlines()[:400]]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    path = tmp_path_factory.mktemp("tiny-hub-model")
    Qwen2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _real(model_dir, *extra):
    return compose(
        "model=qwen2.5-0.5b", f"model.name_or_path={model_dir}", "model.gradient_checkpointing=false",
        "task=gsm8k", f"++task.data_files={{train: {GSM8K / 'train.jsonl'}, test: {GSM8K / 'test.jsonl'}}}",
        "task.n_test=6", "task.max_completion_tokens=12", "+task@eval.tasks.math500=math500",
        f"++eval.tasks.math500.data_files={{test: {MATH500 / 'test.jsonl'}}}", "eval.tasks.math500.n_test=6",
        "trainer.steps=2", "trainer.prompts_per_step=2", "trainer.group_size=2", "trainer.micro_batch_size=2",
        "eval.every=0", "logger=none", "logger.progress=false", *extra,
    )


def test_rl_on_gsm8k_with_math500_evaluated_in_the_same_run(model_dir, tmp_path):
    summary = run(_real(model_dir, "algorithm=dash", "kl=on", "filter=off"), tmp_path)
    assert summary["status"] == "completed" and summary["steps"] == 2
    for key in ("final/greedy_acc", "final/sampled_acc", "final/math500/greedy_acc", "base/math500/sampled_acc"):
        assert key in summary, key
    train = read_metrics(tmp_path, "train")
    assert len(train) == 2 and train[-1]["time/reference_s"] > 0
    assert train[-1]["completions/mean_length"] <= 12


def test_sft_on_a_stronger_models_traces(model_dir, tmp_path):
    rows = [json.loads(line) for line in (GSM8K / "train.jsonl").read_text().splitlines()[:5]]
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps({"problem": r["question"], "completion": "So \\boxed{1}."}) + "\n" for r in rows))
    summary = run(_real(model_dir, "algorithm=sft", f"sft.source={traces}"), tmp_path / "run")
    assert summary["status"] == "completed"
    assert read_metrics(tmp_path / "run", "train")[0]["completions/mean_length"] > 0


def test_missing_model_path_is_one_clear_line(tmp_path):
    with pytest.raises(ModelError, match="does not exist") as info:
        run(_real(tmp_path / "no-such-model"), tmp_path / "run")
    assert "\n" not in str(info.value)
