"""The vLLM sampling backend: an offline ``vllm.LLM`` engine colocated with training.

The engine runs in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the policy's
weights reach it by reference, not through a socket. It is built with ``load_format="dummy"``
(random weights, nothing read from disk but the config) and every weight it ever samples with
is pushed from the policy:

- ``sync_weights(policy)`` (the trainer calls it after every optimizer step) marks the engine's
  weights out of date; the next ``generate`` pushes once, so PPO's several updates per sampled
  batch cost one push. A push streams the policy's weights (``modeling.merged_weights``, one at a time: the
  state dict, or for a LoRA policy its adapters merged into the base weights, under the base
  model's names) into the engine through the worker's
  ``reload_weights`` (vLLM's in-place reload: it maps checkpoint names onto vLLM's fused layers
  and redoes the post-load processing, e.g. the CPU build's packed weights), then clears the
  prefix cache, whose keys and values were computed with the old weights.
- Staleness is checked, never assumed: a sync records a fingerprint of the policy's weights
  (the float64 sum of a fixed strided sample of at most ``FINGERPRINT_SAMPLES`` entries of every
  parameter: an optimizer step moves all of them, so does loading a checkpoint), and ``generate``
  recomputes it and raises ``StaleWeightsError`` if it moved, i.e. if the policy changed and nobody
  synced. (Tensor version counters would be cheaper, but a fused AdamW step does not bump them.)
- The engine computes in ``sampler.dtype`` (auto: bfloat16 on CUDA, which FlashAttention needs and
  halves weight and KV-cache memory; the policy's dtype on CPU), its context is ``max_model_len``
  tokens (default: the longest prompt budget plus ``max_new_tokens``, not the model's 32k), and the
  CUDA cache is emptied before the engine wakes (TRL does the same, against out-of-memory on wake-up).
- The push itself is verified: the first ``generate`` after a sync scores a probe sequence (the
  batch's own first prompts) with the engine's prompt log-probs and with a forward pass of the
  policy, and raises ``WeightSyncError`` if they disagree by more than the dtype's tolerance
  (a push that loaded nothing, or the wrong tensors, is off by nats).
- Sleep mode (GPU only; ``enable_sleep_mode``): the engine sleeps at level 2 after every
  ``generate`` (KV cache and weights freed; the weights are re-pushed from the policy anyway),
  wakes its weight memory to take a push, and its KV cache just before sampling.

Sampling semantics are the HF backend's: the same temperature, top-k (0: off), top-p,
``max_new_tokens``, greedy as temperature 0, stop at the tokenizer's end-of-sequence token (vLLM
also stops at any end-of-sequence id listed in the model's ``generation_config.json``: the same
token for base models, an extra one for some chat models), the model's own sampling defaults ignored, ``n`` rows per prompt laid out group by group,
``batch_size`` capping the rows per engine call, and log-probs of the sampled tokens under the
untempered policy (vLLM's ``raw_logprobs``). Randomness comes from torch's global generator
(vLLM samples with the default generator of the device), seeded by the trainer like the HF
backend's; building the engine leaves that generator's state as it was.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import torch

from rlreason.batching import unwrap_model
from rlreason.errors import ConfigError
from rlreason.modeling import merged_weights
from rlreason.sampling import Completions, Sampler

log = logging.getLogger(__name__)

INSTALL_HINT = "sampler=vllm needs vLLM: pip install vllm (GPU) or make install-vllm (CPU)"
# Largest mean |engine - policy| log-prob gap (nats per probe token) that still counts as the same
# weights, by dtype. fp32 engines agree to ~1e-6 here; bf16 kernels differ from transformers' by
# a few 1e-2 on average. A sync that failed is off by whole nats.
SYNC_CHECK_TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.15, torch.float16: 0.1}
PROBE_TOKENS = 32
# Entries of each parameter the staleness fingerprint reads (a fixed stride through the flattened tensor).
FINGERPRINT_SAMPLES = 4096
# Prompt tokens budgeted in the engine's context when sampler.max_model_len is not set (null).
DEFAULT_PROMPT_BUDGET = 1024


def engine_dtype(setting: str | None, policy_dtype: torch.dtype, on_cuda: bool) -> torch.dtype:
    """``sampler.dtype``: auto (or unset) is bfloat16 on CUDA and the policy's dtype elsewhere."""
    if setting in (None, "auto"):
        return torch.bfloat16 if on_cuda else policy_dtype
    dtype = getattr(torch, str(setting), None)
    if not isinstance(dtype, torch.dtype) or dtype not in SYNC_CHECK_TOLERANCE:
        raise ConfigError(f"sampler.dtype={setting!r}: use auto, float32, bfloat16 or float16")
    return dtype


def sync_check_tolerance(engine: torch.dtype, policy: torch.dtype) -> float:
    """The push check's tolerance: that of the coarser of the engine's and the policy's dtypes."""
    return max(SYNC_CHECK_TOLERANCE.get(engine, 0.15), SYNC_CHECK_TOLERANCE.get(policy, 0.15))


def engine_max_model_len(sampler_cfg: Any, model_config: Any) -> int:
    """``sampler.max_model_len``, or the prompt budget plus ``max_new_tokens``, within the model's positions."""
    configured = getattr(sampler_cfg, "max_model_len", None)
    want = int(configured) if configured else DEFAULT_PROMPT_BUDGET + int(sampler_cfg.max_new_tokens)
    positions = getattr(model_config, "max_position_embeddings", None)
    return min(want, positions) if positions else want


class StaleWeightsError(RuntimeError):
    """The policy changed after the last ``sync_weights``: the engine would sample an old policy."""


class WeightSyncError(RuntimeError):
    """A weight push left the engine computing something other than the policy."""


def import_vllm() -> Any:
    """The ``vllm`` module, or one line saying how to install it."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process: see module doc
    try:
        import vllm
    except ModuleNotFoundError as exc:
        if exc.name == "vllm":
            raise ConfigError(INSTALL_HINT) from None
        raise ConfigError(f"{INSTALL_HINT} (vLLM is installed but needs {exc.name!r}: {exc})") from None
    except ImportError as exc:
        raise ConfigError(f"{INSTALL_HINT} (vLLM is installed but fails to import: {str(exc).splitlines()[0]})") from None
    return vllm


class _DropExpectedWarnings(logging.Filter):
    """Two vLLM warnings that are expected here, and would otherwise repeat with a traceback at
    every start-up and at every weight sync: the chat-template warm-up that fails without a
    tokenizer (this backend never renders chats), and a rotary embedding "failing" to reload (its
    cos/sin cache is computed from the config, holds no weights, and is kept as it was)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("Chat template warmup failed"):
            return False
        if record.msg == "%s: Failed to load weights" and record.args and str(record.args[0]).endswith("RotaryEmbedding"):
            return False
        return True


def _quiet_expected_vllm_warnings() -> None:
    for name in ("vllm.renderers.base", "vllm.model_executor.model_loader.reload.layerwise"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropExpectedWarnings) for f in logger.filters):
            logger.addFilter(_DropExpectedWarnings())


@torch.no_grad()
def policy_fingerprint(policy: torch.nn.Module) -> torch.Tensor:
    """Per parameter, the float64 sum of a fixed strided sample of at most ``FINGERPRINT_SAMPLES`` entries
    (no copy of the weights): changes whenever an optimizer step (fused or not), ``load_state_dict`` or a
    write through ``.data`` changes the weights; a write to a few entries between the samples can escape it."""
    stats = []
    for p in policy.parameters():
        flat = p.detach().reshape(-1)
        stride = max(1, -(-flat.numel() // FINGERPRINT_SAMPLES))
        stats.append(flat[::stride].sum(dtype=torch.float64))
    return torch.stack(stats).cpu()


def _empty_cuda_cache() -> None:
    """Give the CUDA cache's free blocks back before the engine wakes (its wake-up allocates in one go)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class VLLMSampler(Sampler):
    """A vLLM engine that samples from the policy's latest pushed weights (see module doc)."""

    returns_logprobs = True  # the sampled token's own log-prob comes with each sample

    def __init__(self, model: Any, tokenizer: Any, sampler_cfg: Any, model_path: str | None = None, seed: int = 0):
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self.policy, self.tokenizer, self.cfg = model, tokenizer, sampler_cfg
        self.eos_id, self.pad_id = tokenizer.eos_token_id, tokenizer.pad_token_id
        self._SamplingParams = vllm.SamplingParams
        path = model_path or getattr(unwrap_model(model), "name_or_path", "")
        if not path:
            raise ConfigError(f"sampler=vllm needs the policy's model directory or hub id (got {path!r})")
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            raise ConfigError("sampler=vllm runs in single-process training only for now (use sampler=hf with accelerate launch)")
        _quiet_expected_vllm_warnings()
        self.policy_dtype = next(model.parameters()).dtype
        self.on_cpu = current_platform.is_cpu()
        self.dtype = engine_dtype(getattr(sampler_cfg, "dtype", None), self.policy_dtype, on_cuda=not self.on_cpu)
        self.max_model_len = engine_max_model_len(sampler_cfg, unwrap_model(model).config)
        self.sleep_mode = bool(sampler_cfg.enable_sleep_mode)
        if self.sleep_mode and self.on_cpu:
            log.warning("sampler.enable_sleep_mode ignored: vLLM's CPU build has no sleep mode")
            self.sleep_mode = False
        if self.on_cpu:
            os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(sampler_cfg.cpu_kvcache_space_gib)
            self._check_cpu_head_size(model)
        rng = torch.random.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            self.llm = vllm.LLM(
                model=str(path),
                dtype=str(self.dtype).removeprefix("torch."),
                load_format="dummy",  # every weight comes from the policy (sync_weights below)
                skip_tokenizer_init=True,  # token ids in and out; text is decoded with the policy's tokenizer
                generation_config="vllm",  # the model's own sampling defaults never apply
                enforce_eager=self.on_cpu,  # no graph capture/compilation on CPU (start-up time, 2 cores)
                gpu_memory_utilization=sampler_cfg.gpu_memory_utilization,
                max_model_len=self.max_model_len,
                enable_sleep_mode=self.sleep_mode,
                seed=seed,
            )
        finally:  # the engine reseeds torch's generators; give the trainer its stream back
            torch.random.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
        self.weights_awake = self.kv_awake = True
        self.synced_fingerprint: torch.Tensor | None = None
        self.verified = False
        self.syncs = 0  # sync_weights calls
        self.pushes = 0  # weight pushes into the engine (at most one per generate)
        self.pending = False
        self.sync_weights(model)

    # ------------------------------------------------------------------ weights
    def sync_weights(self, policy: torch.nn.Module) -> None:
        """Mark the engine's weights out of date (the trainer: after every optimizer step); the next
        ``generate`` pushes ``policy``'s weights then, once however many updates came before it."""
        self.policy = policy
        self.synced_fingerprint = policy_fingerprint(policy)
        self.pending = True
        self.syncs += 1

    def _push(self) -> None:
        """Stream the policy's weights into the engine now."""
        if not self.weights_awake:
            _empty_cuda_cache()
            self.llm.wake_up(tags=["weights"])
            self.weights_awake = True
        with torch.no_grad():
            # The base model's names; a LoRA policy's adapters merged into its weights (vLLM gets a plain model),
            # one weight at a time.
            weights = ((name, tensor.detach()) for name, tensor in merged_weights(self.policy))
            # The worker's in-place reload, run in this process: the tensors go by reference.
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()  # cached keys/values were computed with the old weights
        self.pending = False
        self.verified = False
        self.pushes += 1

    def check_fresh(self) -> None:
        """Raise ``StaleWeightsError`` if the policy changed after the last sync."""
        now = policy_fingerprint(self.policy)
        if self.synced_fingerprint is None or not torch.equal(self.synced_fingerprint, now):
            raise StaleWeightsError(
                "the policy's weights changed after the last sampler.sync_weights(policy): the vLLM engine "
                "would sample an old policy (call sync_weights after every optimizer step)"
            )

    def verify_sync(self, probe: list[int]) -> float:
        """Mean |engine - policy| log-prob over ``probe``'s tokens; raises ``WeightSyncError`` past the tolerance."""
        params = self._SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        out = self.llm.generate([{"prompt_token_ids": probe}], params, use_tqdm=False)[0]
        engine = torch.tensor([entry[token].logprob for entry, token in zip(out.prompt_logprobs[1:], probe[1:])])
        inner = unwrap_model(self.policy)
        device = next(inner.parameters()).device
        was_training = inner.training
        inner.eval()
        try:
            with torch.no_grad():
                logits = inner(input_ids=torch.tensor([probe], device=device), use_cache=False).logits[0, :-1].float()
        finally:
            inner.train(was_training)
        policy = torch.log_softmax(logits, -1).gather(-1, torch.tensor(probe[1:], device=device)[:, None])[:, 0].cpu()
        gap = float((engine - policy).abs().mean())
        tolerance = sync_check_tolerance(self.dtype, self.policy_dtype)
        if not math.isfinite(gap) or gap > tolerance:
            raise WeightSyncError(
                f"after sync_weights the vLLM engine's log-probs differ from the policy's by {gap:.3g} nats per token "
                f"(tolerance {tolerance} for {self.dtype}): the weight push did not take"
            )
        self.verified = True
        return gap

    # ------------------------------------------------------------------ sampling
    def _sampling_params(self, greedy: bool, return_logprobs: bool) -> Any:
        c = self.cfg
        return self._SamplingParams(
            n=1,
            temperature=0.0 if greedy else c.temperature,
            top_k=0 if greedy else c.top_k,
            top_p=1.0 if greedy else c.top_p,
            max_tokens=c.max_new_tokens,
            stop_token_ids=[self.eos_id],  # as the HF backend: the tokenizer's end-of-sequence token
            logprobs=0 if return_logprobs else None,  # 0: the sampled token's own log-prob
            detokenize=False,
        )

    def _wake(self) -> None:
        if self.pending or not self.weights_awake:  # a sync since the last push, or slept at level 2: push
            self._push()
        if not self.kv_awake:
            _empty_cuda_cache()
            self.llm.wake_up(tags=["kv_cache"])
            self.kv_awake = True

    def _sleep(self) -> None:
        if self.sleep_mode:
            self.llm.sleep(level=2)
            self.weights_awake = self.kv_awake = False

    def generate(
        self, prompts: list[str], n: int, greedy: bool = False, return_logprobs: bool = False, batch_size: int | None = None
    ) -> Completions:
        if self.llm is None:
            raise RuntimeError("this vLLM sampler is closed (the trainer closes its engine when fit() returns)")
        self.check_fresh()
        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        rows = [ids for ids in encoded for _ in range(n)]
        out = Completions(prompt_ids=[], completion_ids=[], texts=[], finished=[], logprobs=[] if return_logprobs else None)
        if not rows:
            return out
        params = self._sampling_params(greedy, return_logprobs)
        self._wake()
        try:
            if not self.verified:
                probe = [t for ids in encoded for t in ids][:PROBE_TOKENS]
                self.verify_sync(probe if len(probe) >= 2 else probe + [self.eos_id] * (2 - len(probe)))
            step = batch_size or len(rows)
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                results = self.llm.generate([{"prompt_token_ids": ids} for ids in chunk], params, use_tqdm=False)
                for ids, result in zip(chunk, results):
                    self._append(out, ids, result.outputs[0])
        finally:
            self._sleep()
        return out

    def _append(self, out: Completions, prompt: list[int], sample: Any) -> None:
        ids = list(sample.token_ids)
        if sample.finish_reason not in ("stop", "length"):
            raise RuntimeError(f"vLLM finished a request with {sample.finish_reason!r}")
        # "stop" at the end-of-sequence token (kept in token_ids, as the HF backend keeps it).
        finished = sample.finish_reason == "stop" and bool(ids) and ids[-1] == self.eos_id
        out.prompt_ids.append(list(prompt))
        out.completion_ids.append(ids)
        out.texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
        out.finished.append(finished)
        if out.logprobs is not None:
            out.logprobs.append([entry[token].logprob for entry, token in zip(sample.logprobs, ids)])

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        self.llm = None
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception as exc:  # best effort at teardown
            log.debug("vLLM shutdown: %s", exc)
        del llm
        import gc

        gc.collect()  # the engine's weights and KV cache go with its last reference ...
        _empty_cuda_cache()  # ... and back to the device, so a later engine's memory check sees them free

    # ------------------------------------------------------------------ helpers
    def _check_cpu_head_size(self, model: Any) -> None:
        """vLLM's CPU attention supports a fixed set of head sizes; say so in one line, not at the first batch."""
        try:
            from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

            supported = CPUAttentionBackend.get_supported_head_sizes()
        except Exception:  # layout of vLLM's internals changed: let the engine speak for itself
            return
        config = unwrap_model(model).config
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        if head_dim not in supported:
            raise ConfigError(
                f"sampler=vllm on CPU needs an attention head size in {supported}; this model's is {head_dim} "
                f"(hidden_size {config.hidden_size} / {config.num_attention_heads} heads; the embedded model, e.g.: "
                "model.hidden_size=64 model.num_attention_heads=2 model.num_key_value_heads=2)"
            )
