"""Data parallelism over several processes (``accelerate launch``), and its one-process stand-in.

The trainer talks to a ``Parallel``; with one process (plain ``python train.py``) every method is
the identity, so single-process training runs exactly the code it always ran (on a machine with
CUDA, the policy and reference are moved to the GPU). Under ``accelerate launch``, even with one
process, accelerate is used (so its ``mixed_precision`` autocast applies), and every rank dies with
its launcher (``die_with_launcher``). Under ``accelerate launch`` with one of the
configs in conf/accelerate/ (DDP on CPU/gloo or GPU/NCCL, or DeepSpeed ZeRO-2; on a CPU, note that
``accelerate launch --cpu --num_processes N`` starts a single process, use ddp_cpu.yaml):

- each process takes a contiguous 1/N of the step's prompts (whole groups, so advantages are
  computed as on one process), samples and scores them, and back-propagates its own rows;
- the loss keeps the global denominator (rows sampled for the update on *all* processes), so the
  sum of the processes' gradients is the single-process gradient; DDP and DeepSpeed *average*
  over processes, so ``backward`` multiplies the loss by N;
- micro-batches run without gradient synchronisation except the last one of an update; every
  process runs the same number of micro-batches (the ones that filtered more rows add empty,
  zero-loss micro-batches), because the synchronising backward is a collective call;
- metrics are reduced from sums and counts (or by gathering the rows in global order), never
  as means of per-process means; only process 0 writes files and logs to W&B. ``time/*`` are
  process 0's wall-clock seconds; ``throughput/*`` are all processes' tokens over them;
- evaluation: each process generates for a contiguous share of the test problems;
- per-process settings: ``trainer.micro_batch_size`` (rows per forward on one device),
  ``algorithm.generation_batch_size`` and ``eval.batch_size``; ``trainer.prompts_per_step`` and
  ``algorithm.mini_batch_size`` are global, so a run's math does not depend on the process count;
- sampling seeds differ per process (seed, rank) and are saved per process in checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # torch is imported where used, so train.py reports a config error without loading it
    import torch


def launched_world_size() -> int:
    """Processes started by ``accelerate launch`` / ``torchrun`` (1 for a plain ``python``)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def launched_by_accelerate() -> bool:
    """Started by ``accelerate launch`` (any process count: it always exports its mixed-precision choice)."""
    return "ACCELERATE_MIXED_PRECISION" in os.environ


def die_with_launcher() -> None:
    """Have the kernel SIGKILL this process when its parent (the launcher) dies (Linux ``PR_SET_PDEATHSIG``).

    torch's launcher starts each rank as its own session leader, so killing the launcher's process
    group does not reach the ranks, and a rank blocked in a collective ignores SIGTERM: without this,
    ranks of a killed job live on, holding their memory (a GPU's, on a GPU).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    if libc.prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the launcher died before the line above
        os._exit(1)


def hydra_overrides_for_rank(argv: list[str]) -> list[str]:
    """Extra Hydra overrides for processes other than 0: they write nothing into the run folder.

    Every process composes the config itself; the run folder's name contains a timestamp that
    processes could read a second apart, so only process 0 uses it (the others learn it from
    process 0) and the others log to the console only.
    """
    if launched_world_size() <= 1 or launched_rank() == 0:
        return []
    given = {arg.split("=", 1)[0].lstrip("+") for arg in argv if "=" in arg}
    extra = ["hydra.output_subdir=null", "hydra/job_logging=stdout"]
    scratch = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"rlreason-rank{launched_rank()}")
    for key in ("hydra.run.dir", "hydra.sweep.dir"):
        if key not in given:
            extra.append(f"{key}={scratch}")
    return extra


class Parallel:
    """One process: nothing is split, reduced or synchronised."""

    rank = 0
    world_size = 1
    is_main = True
    uses_deepspeed = False

    @property
    def device(self) -> torch.device | None:
        """Where models go: the GPU if there is one; None leaves them where they were loaded (CPU)."""
        import torch

        return torch.device("cuda") if torch.cuda.is_available() else None

    @property
    def compute_dtype(self) -> torch.dtype | None:
        """The dtype autocast computes in (accelerate's ``mixed_precision``); None: no autocast."""
        return None

    def prepare(self, model: Any, optimizer: Any, micro_batch_size: int, max_grad_norm: float) -> tuple[Any, Any]:
        """The model to run training forwards through, and the optimizer to step."""
        return model, optimizer

    def autocast(self) -> contextlib.AbstractContextManager:
        """Around a log-prob computation: the mixed-precision autocast the prepared model's forward runs
        under, also for what follows that forward (the chunked output layer); a no-op without it."""
        return contextlib.nullcontext()

    def prepare_reference(self, model: Any) -> Any:
        """The frozen reference model, computing as the policy does (cast, and under the same autocast)."""
        return model

    def shard(self, items: list[Any]) -> list[Any]:
        """This process's contiguous share of ``items`` (all of them with one process)."""
        return items

    def micro_batches(self, local: int, sync: bool) -> int:
        """Micro-batches to run: the most any process has (see ``backward_context``)."""
        return local

    @contextlib.contextmanager
    def backward_context(self, model: Any, sync: bool) -> Iterator[None]:
        """Around one forward+backward: ``sync`` False accumulates locally without communicating."""
        yield

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm(self, model: Any, max_norm: float) -> float:
        import torch

        return float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes."""
        return values

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order."""
        return [obj]

    def broadcast(self, obj: Any) -> Any:
        """Process 0's ``obj`` on every process."""
        return obj

    def barrier(self) -> None:
        pass

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        """Process 0 runs the block before the others (which then find what it wrote)."""
        yield


class AccelerateParallel(Parallel):
    """Several processes through ``accelerate.Accelerator`` (its launch config picks DDP or DeepSpeed)."""

    def __init__(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        from rlreason.errors import ConfigError

        # Without CUDA, processes started by `accelerate launch --multi_gpu` (or conf/accelerate/ddp_cpu.yaml)
        # run on the CPU and talk over gloo; with CUDA, one GPU per process and NCCL.
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        if self.accelerator.num_processes != launched_world_size():
            raise ConfigError(
                f"{launched_world_size()} processes were launched but accelerate set up {self.accelerator.num_processes}; "
                "launch with `accelerate launch --config_file conf/accelerate/ddp_cpu.yaml` (CPU) or ddp_gpu.yaml"
            )
        self.rank = self.accelerator.process_index
        self.world_size = self.accelerator.num_processes
        self.is_main = self.accelerator.is_main_process
        self.uses_deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        self._unsynced = False  # this process back-propagated since the last synchronisation

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def compute_dtype(self) -> torch.dtype | None:
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(self.accelerator.mixed_precision))

    def autocast(self) -> contextlib.AbstractContextManager:
        return self.accelerator.autocast()

    def prepare_reference(self, model: Any) -> Any:
        import functools

        if model is None:
            return None
        if self.compute_dtype is not None:
            model.to(self.compute_dtype)  # frozen: no optimizer needs fp32 master weights
            forward = model.forward
            accelerator = self.accelerator

            @functools.wraps(forward)
            def autocast_forward(*args: Any, **kwargs: Any) -> Any:
                with accelerator.autocast():
                    return forward(*args, **kwargs)

            model.forward = autocast_forward
        return model

    def prepare(self, model: Any, optimizer: Any, micro_batch_size: int, max_grad_norm: float) -> tuple[Any, Any]:
        if self.uses_deepspeed:
            # No dataloader tells DeepSpeed its batch size; it only books it (the trainer splits batches).
            plugin = self.accelerator.state.deepspeed_plugin
            for key, value in (("train_micro_batch_size_per_gpu", micro_batch_size), ("gradient_clipping", max_grad_norm)):
                if plugin.is_auto(key):
                    plugin.deepspeed_config[key] = value
        # DDP broadcasts process 0's weights on wrapping, so every replica starts identical.
        return self.accelerator.prepare(model, optimizer)

    def shard(self, items: list[Any]) -> list[Any]:
        per = -(-len(items) // self.world_size)
        return items[self.rank * per : (self.rank + 1) * per]

    def micro_batches(self, local: int, sync: bool) -> int:
        import torch

        if self.world_size == 1:  # `accelerate launch --num_processes 1`: no process group
            return local
        counts = torch.tensor([local, int(self._unsynced)], device=self.device)
        torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.MAX)
        most, pending = int(counts[0]), bool(counts[1])
        # Gradients accumulated earlier (GRPO's previous chunks) still need one synchronising pass.
        return max(most, 1) if sync and pending else most

    @contextlib.contextmanager
    def backward_context(self, model: Any, sync: bool) -> Iterator[None]:
        if self.uses_deepspeed:
            # DeepSpeed reduces at the boundary (ZeRO-2 also every micro-batch: hence equal counts)
            # and steps its optimizer inside the boundary's backward.
            self.accelerator.gradient_state._set_sync_gradients(sync)
            try:
                yield
            finally:
                self.accelerator.gradient_state._set_sync_gradients(True)
        else:
            with contextlib.nullcontext() if sync else self.accelerator.no_sync(model):
                yield
        self._unsynced = not sync

    def backward(self, loss: torch.Tensor) -> None:
        # The loss is already divided by the global row count; DDP/DeepSpeed divide the summed
        # gradient by the number of processes once more, which this factor undoes.
        self.accelerator.backward(loss * self.world_size)

    def clip_grad_norm(self, model: Any, max_norm: float) -> float:
        # DDP: gradients are identical on every process after synchronisation, so is the norm.
        # DeepSpeed clips inside its step (``gradient_clipping`` in its config) and reports the norm.
        norm = self.accelerator.clip_grad_norm_(model.parameters(), max_norm)
        # DeepSpeed has already stepped; a norm it does not report must not count as a non-finite step.
        return 0.0 if norm is None else float(norm)

    def sum(self, values: list[float]) -> list[float]:
        import torch

        if self.world_size == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        import torch

        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        import torch

        if self.world_size == 1:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    @contextlib.contextmanager
    def main_process_first(self) -> Iterator[None]:
        with self.accelerator.main_process_first():
            yield


_PARALLEL: Parallel | None = None


def get_parallel() -> Parallel:
    """This process's ``Parallel`` (created once: the process group lives as long as the process)."""
    global _PARALLEL
    if _PARALLEL is None:
        if launched_world_size() > 1 or launched_by_accelerate():
            die_with_launcher()
        # Under `accelerate launch` even with one process, so its mixed precision (autocast) applies.
        _PARALLEL = AccelerateParallel() if launched_world_size() > 1 or launched_by_accelerate() else Parallel()
    return _PARALLEL
