"""Policy and reference models: hub ids, local directories, or the embedded tiny model.

The embedded model is a standard Qwen2 built from a config, with a character-level tokenizer
built locally, saved and loaded with ``save_pretrained``/``from_pretrained`` like any hub model.
Its warm start (a short pretraining on the teacher's noisy worked solutions, which gives the
base model partial skill) is built on first use and cached under ``cache_dir`` keyed by every
setting that changes it, so later runs and sweep jobs reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from rlreason.batching import TokenBatch, make_batch, token_logprobs, unwrap_model
from rlreason.config import resolve_model_path
from rlreason.errors import ConfigError, ModelError, first_line
from rlreason.rl import policy_loss
from rlreason.tasks.base import Task

log = logging.getLogger(__name__)

PAD, EOS = "<pad>", "<eos>"
# Bump when the warm-start recipe changes, so stale cached base models are not reused.
WARM_START_VERSION = 1
# Warm-start data comes from this far into the train stream, apart from what RL trains on.
WARM_START_DATA_OFFSET = 10_000_000


def build_char_tokenizer(alphabet: str) -> PreTrainedTokenizerFast:
    """One token per character, plus pad and end-of-sequence; left padding for generation."""
    vocab = {PAD: 0, EOS: 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=PAD))
    core.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, padding_side="left")


def build_tiny_model(model_cfg: Any, tokenizer: PreTrainedTokenizerFast, seed: int) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    vocab_size = model_cfg.vocab_size or len(tokenizer)
    if vocab_size < len(tokenizer):
        raise ConfigError(f"model.vocab_size={vocab_size} is smaller than the tokenizer's {len(tokenizer)} tokens")
    config = Qwen2Config(
        vocab_size=vocab_size,
        hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size,
        num_hidden_layers=model_cfg.num_hidden_layers,
        num_attention_heads=model_cfg.num_attention_heads,
        num_key_value_heads=model_cfg.num_key_value_heads,
        max_position_embeddings=model_cfg.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return Qwen2ForCausalLM(config)


def load_model(path: str, model_cfg: Any, dtype: torch.dtype | None = None) -> Any:
    """A causal LM from a hub id or directory (in ``dtype``, default ``model.dtype``); one clear line if it
    cannot be loaded."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype or getattr(torch, model_cfg.dtype), attn_implementation=model_cfg.attn_implementation
        )
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load model {path!r}: {first_line(exc)}") from None
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model


# tokenizer_config.json's class of a plain ``tokenizers`` tokenizer (the embedded one, saved by transformers 4 / 5).
PLAIN_TOKENIZER_CLASSES = ("PreTrainedTokenizerFast", "TokenizersBackend")


def _saved_tokenizer_class(path: str) -> str | None:
    try:
        return json.loads((Path(path) / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None


def load_tokenizer(path: str) -> Any:
    """The tokenizer saved in ``path``. The embedded character tokenizer keeps its class: AutoTokenizer would
    pick the model type's (Qwen2's), whose pre-tokenizer drops the spaces and newlines code needs."""
    try:
        if (Path(path) / "rlreason_base.json").exists() or _saved_tokenizer_class(path) in PLAIN_TOKENIZER_CLASSES:
            tokenizer = PreTrainedTokenizerFast.from_pretrained(path)
        else:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot load tokenizer of {path!r}: {first_line(exc)}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def base_model_path(cfg: Any, task: Task) -> str:
    """Where the base model lives: the configured path, or the cached embedded warm start."""
    if cfg.model.name_or_path:
        return resolve_model_path(cfg.model.name_or_path)
    if task.alphabet() is None:
        raise ConfigError(
            f"model={cfg.model.name} builds a character-level model from the task's alphabet, and task={task.name} "
            "gives none (Task.alphabet); set model.name_or_path to a hub model or directory"
        )
    return str(ensure_warm_start(cfg, task))


def warm_start_key(cfg: Any, task: Task) -> dict[str, Any]:
    """Every setting that changes the warm-started base model: the model's shape, the task's data
    (``Task.cache_key``, plus its alphabet when not the arithmetic one, so old caches keep their keys)."""
    m, w = cfg.model, cfg.model.warm_start
    task_key = dict(task.cache_key())
    alphabet = task.alphabet()
    from rlreason.tasks.arithmetic import ALPHABET

    if alphabet != ALPHABET:
        task_key["alphabet"] = alphabet
    return {
        "version": WARM_START_VERSION,
        "model": {k: m[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                    "num_key_value_heads", "max_position_embeddings")},
        "task": task_key,
        "warm_start": {k: w[k] for k in ("enabled", "steps", "batch_size", "lr")},
        "seed": cfg.seed,
    } | ({"vocab_size": m.vocab_size} if m.vocab_size else {})  # only when set: older caches keep their keys


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Sweep jobs running in parallel build the same base model once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_warm_start(cfg: Any, task: Task) -> Path:
    """The cached base model for this config, built (atomically, under a lock) if missing."""
    key = warm_start_key(cfg, task)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    cache = Path(cfg.cache_dir).expanduser()
    target = cache / f"base-{digest}"
    with _file_lock(cache / f"base-{digest}.lock"):
        if (target / "rlreason_base.json").exists() and (target / "config.json").exists():
            return target  # (a folder without config.json is a broken build: built again below)
        tokenizer = build_char_tokenizer(task.alphabet())
        model = build_tiny_model(cfg.model, tokenizer, cfg.seed)
        n_params = sum(p.numel() for p in model.parameters())
        log.info("building the base model (%.2fM params, %d warm-start steps), cached in %s", n_params / 1e6,
                 cfg.model.warm_start.steps if cfg.model.warm_start.enabled else 0, target)
        if cfg.model.warm_start.enabled:
            warm_start(model, tokenizer, task, cfg.model.warm_start, cfg.seed)
        tmp = cache / f".tmp-base-{digest}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "rlreason_base.json").write_text(json.dumps(key, indent=2))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    return target


def warm_start(model: Any, tokenizer: Any, task: Task, ws_cfg: Any, seed: int) -> None:
    """SFT on the teacher's noisy worked solutions: partial skill, as a real base model has."""
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=ws_cfg.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 - s / max(1, ws_cfg.steps))
    model.train()
    for step in range(ws_cfg.steps):
        examples = task.train_batch(WARM_START_DATA_OFFSET + step * ws_cfg.batch_size, ws_cfg.batch_size)
        prompts = [tokenizer(e.prompt, add_special_tokens=False)["input_ids"] for e in examples]
        targets = [tokenizer(task.sft_target(e, "teacher"), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                   for e in examples]
        batch = make_batch(prompts, targets, tokenizer.pad_token_id)
        logp, _ = token_logprobs(model, batch)
        loss, _ = policy_loss(logp, batch.completion_mask, torch.ones(len(examples)), denominator=len(examples))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % max(1, ws_cfg.steps // 4) == 0:
            nll = float(-(logp.detach() * batch.completion_mask).sum() / batch.completion_mask.sum())
            log.info("warm start %d/%d: token nll %.3f", step + 1, ws_cfg.steps, nll)


def load_policy(cfg: Any, task: Task, tokenizer: Any = None) -> tuple[Any, Any, str]:
    """(policy, tokenizer, base path); the policy trains, the tokenizer pads on the left. A tokenizer
    already loaded from the same path is reused."""
    path = base_model_path(cfg, task)
    tokenizer = tokenizer or load_tokenizer(path)
    model = load_model(path, cfg.model)
    # The adapters' random init from the run's seed alone: not from whatever the process drew before (a base
    # model just built or read from the cache, another rank's stream), so one process and two give one run.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = apply_lora(model, cfg.model.lora)  # rank 0: the model itself
    model.train()
    return model, tokenizer, path


def trainable_parameters(model: Any) -> list[torch.nn.Parameter]:
    """What the optimizer updates: every parameter, or with LoRA only the adapters'."""
    return [p for p in model.parameters() if p.requires_grad]


def load_reference(path: str, model_cfg: Any, dtype: torch.dtype | None = None) -> Any:
    """A frozen copy of the base model, for the KL penalty (loaded only when kl.beta > 0), in the dtype the
    policy computes in: ``model.dtype``, or ``dtype`` (the autocast dtype under mixed precision,
    ``Parallel.compute_dtype``: frozen weights need no fp32 master copy). Its forward runs under the
    policy's autocast through ``Parallel.prepare_reference``."""
    model = load_model(path, model_cfg, dtype=dtype)
    model.eval()
    model.requires_grad_(False)
    return model


class Reference(Protocol):
    """The KL penalty's reference policy, as the learner sees it: log-probs of a batch's completion tokens
    ([B, C], no gradient). The learner never asks which kind it has."""

    def logprobs(self, batch: TokenBatch) -> torch.Tensor: ...


class FrozenReference:
    """A frozen copy of the base model (``load_reference``), beside the policy."""

    def __init__(self, model: Any) -> None:
        self.model = model

    @torch.no_grad()
    def logprobs(self, batch: TokenBatch) -> torch.Tensor:
        return token_logprobs(self.model, batch)[0]


class AdaptersOffReference:
    """The LoRA policy with its adapters disabled, i.e. the base model: KL without a second copy of the weights."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy

    def logprobs(self, batch: TokenBatch) -> torch.Tensor:
        with reference_via_disabled_adapters(self.policy) as base:
            return token_logprobs(base, batch)[0]


def is_lora(model: Any) -> bool:
    """A peft model (``model.lora.rank`` > 0), under any DDP/accelerate wrapper."""
    import sys

    if "peft" not in sys.modules:  # nothing made a peft model: full fine-tunes never import it
        return False
    from peft import PeftModel

    return isinstance(unwrap_model(model), PeftModel)


def _lora_setting(lora_cfg: Any, key: str, default: Any) -> Any:
    return lora_cfg.get(key, default) if isinstance(lora_cfg, dict) else getattr(lora_cfg, key, default)


def apply_lora(model: Any, lora_cfg: Any) -> Any:
    """The model with LoRA adapters (peft) on ``target_modules``, only the adapters trainable; ``rank`` 0:
    the model itself. A target that names no module of this model is a ConfigError listing the names it has."""
    rank = int(_lora_setting(lora_cfg, "rank", 0) or 0)
    if rank <= 0:
        return model
    targets = list(_lora_setting(lora_cfg, "target_modules", None) or [])
    head = model.get_output_embeddings()
    head_names = {name for name, module in model.named_modules() if module is head and name}
    leaf_names = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear) and name not in head_names})
    full_names = [name for name, _ in model.named_modules() if name]

    def names(target: str, among: Any) -> bool:
        return any(n == target or n.endswith("." + target) for n in among)

    missing = [t for t in targets if not names(t, full_names)]
    if not targets or missing:
        what = f"names no module of this model: {missing}" if missing else "is empty"
        raise ConfigError(f"model.lora.target_modules {what}; its linear layers are: {', '.join(leaf_names)}")
    on_head = [t for t in targets if names(t, head_names)]
    if on_head:  # the chunked log-probs read the output layer's weight directly (rlreason.batching)
        raise ConfigError(f"model.lora.target_modules has the output layer {on_head}, whose adapters the chunked "
                          f"log-probs would bypass (they would never train); its other linear layers are: {', '.join(leaf_names)}")
    from peft import LoraConfig, get_peft_model

    if any(getattr(m, "gradient_checkpointing", False) for m in model.modules()):
        # The embeddings are frozen: without this, checkpointed blocks see inputs that need no gradient and
        # the adapters inside them get none.
        model.enable_input_require_grads()
    config = LoraConfig(r=rank, lora_alpha=float(_lora_setting(lora_cfg, "alpha", 2 * rank)),
                        lora_dropout=float(_lora_setting(lora_cfg, "dropout", 0.0)), target_modules=targets,
                        bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


@contextlib.contextmanager
def reference_via_disabled_adapters(policy: Any) -> Iterator[Any]:
    """The LoRA policy with its adapters off, i.e. the base model: the KL reference without a second copy of
    the weights, in eval mode as a frozen reference is, under no_grad; the policy's mode is restored after.
    ``with reference_via_disabled_adapters(policy) as reference: token_logprobs(reference, batch)``."""
    inner = unwrap_model(policy)
    if not hasattr(inner, "disable_adapter"):
        raise ConfigError("the reference via disabled adapters needs a LoRA policy (model.lora.rank > 0)")
    was_training = inner.training
    inner.eval()
    try:
        with inner.disable_adapter(), torch.no_grad():
            yield policy
    finally:
        inner.train(was_training)


def merged_weights(model: Any) -> Iterator[tuple[str, torch.Tensor]]:
    """The policy's weights under the base model's own names (what ``from_pretrained`` and vLLM read), one
    at a time: the state dict itself, or for a LoRA policy each adapted weight with its adapters merged in
    (W + scale * B @ A, computed aside when that weight comes: the policy's own weights are not touched, and a
    vLLM push holds one merged layer at a time, not a second copy of every adapted weight) and no adapter tensors."""
    inner = unwrap_model(model)
    if not is_lora(inner):
        yield from inner.state_dict().items()
        return
    from peft.tuners.lora import LoraLayer

    base = inner.get_base_model()
    adapted = {f"{name}.weight": module for name, module in base.named_modules()
               if isinstance(module, LoraLayer) and not module.merged}
    for key, tensor in base.state_dict().items():
        if "lora_" in key:
            continue
        key = key.replace(".base_layer.", ".")
        module = adapted.get(key)
        if module is not None:
            with torch.no_grad():
                delta = sum(module.get_delta_weight(a) for a in module.active_adapters if a in module.lora_A)
                if isinstance(delta, torch.Tensor):
                    tensor = tensor + delta.to(tensor.dtype)
        yield key, tensor


def merged_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """``merged_weights`` as one dict (the merged export's ``save_pretrained`` takes a whole state dict)."""
    return dict(merged_weights(model))


def export_merged(model: Any, tokenizer: Any, target: Path) -> Path:
    """Write a full model (config, merged weights, tokenizer) to ``target``, loadable with ``from_pretrained``
    (``model.name_or_path``, vLLM); written aside and renamed into place, so ``target`` is whole or absent."""
    target = Path(target)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    inner = unwrap_model(model)
    base = inner.get_base_model() if is_lora(inner) else inner
    try:
        base.save_pretrained(tmp, state_dict=merged_state_dict(inner))
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_checkpoint_weights(policy: Any, path: Path, model_cfg: Any) -> None:
    """Put a checkpoint's weights into ``policy``: with LoRA its adapter (exactly; the base weights are the
    base model's, which the run's config fixes), otherwise the whole model."""
    path = Path(path)
    inner = unwrap_model(policy)
    if not is_lora(inner):
        policy.load_state_dict(load_model(str(path), model_cfg).state_dict())
        return
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    if not (path / "adapter_config.json").exists():
        raise ModelError(f"checkpoint {path} holds no LoRA adapter (adapter_config.json), but model.lora.rank > 0")
    result = set_peft_model_state_dict(inner, load_peft_weights(str(path), device="cpu"))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing or result.unexpected_keys:
        raise ModelError(f"checkpoint {path}: the adapter does not fit this model (missing {missing[:3]}, "
                         f"unexpected {list(result.unexpected_keys)[:3]})")
