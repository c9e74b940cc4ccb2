"""Running model-written code: warm sandboxed workers that fork one child per program.

Model-written code never runs in the trainer's process. A ``Sandbox`` keeps ``workers`` warm
Python processes (``rlreason.sandbox_worker``), each started once; for every ``Program`` a worker
forks a child that runs the candidate on all its inputs under resource limits and a wall-clock
limit per input and per program, and kills the child's whole process group afterwards. Programs
run in parallel across the workers; each runs in a fresh fork, so the outcomes do not depend on
the number of workers or on the order.

Modes (docs/sandbox.md says exactly what each isolates):

- ``bwrap``: each worker runs inside bubblewrap: its own pid, network, IPC and UTS namespaces
  (no network at all, no other process visible), a read-only file system holding only the
  interpreter and /usr, a private /tmp, an empty environment. The candidate runs as an
  unprivileged uid (root ignores the process-count limit, so a fork bomb is stopped only that
  way), and after each program every process left in the worker's pid namespace is killed.
- ``process``: the same workers and limits without bubblewrap (one start-up line says what that
  does not protect against).

Outputs come back as ``encode``'d values; the caller ``decode``s them and compares in its own
process, never with the candidate's ``==``.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import weakref
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlreason.errors import ConfigError, SandboxError
from rlreason.sandbox_worker import decode, encode

__all__ = ["Sandbox", "SandboxConfig", "Program", "Outcome", "encode", "decode", "SandboxError"]

log = logging.getLogger(__name__)

MODES = ("bwrap", "process")
STATUSES = ("ok", "syntax_error", "missing_entry_point", "timeout", "crashed")
WORKER_SOURCE = Path(__file__).with_name("sandbox_worker.py").read_text()
# A worker that does not answer this long after its program's own limit is killed and replaced.
WORKER_GRACE_S = 5.0
# How long a fresh worker may take to say it is ready (a cold start of Python is about 0.1 s).
START_TIMEOUT_S = 20.0
PROCESS_MODE_WARNING = (
    "sandbox mode=process: candidate code runs with resource limits and a scrubbed environment only; "
    "it can read the file system, write wherever uid {uid} may, use the network, and signal processes of that uid "
    "(install bubblewrap for mode=bwrap)"
)


@dataclass
class SandboxConfig:
    """How candidate programs are run; a code task's ``sandbox`` node maps onto this."""

    mode: str = "bwrap"  # bwrap (isolated, see module docstring) | process (resource limits only)
    workers: int = 0  # parallel warm workers; 0: one per CPU core available to this process
    test_timeout_s: float = 4.0  # wall-clock limit for one call of the entry point (and for the module's own code)
    completion_timeout_s: float = 20.0  # wall-clock limit for one whole program (all its inputs)
    cpu_s: float = 20.0  # CPU-time limit of one program's process (RLIMIT_CPU)
    memory_mb: int = 1024  # address-space limit of one program's process (RLIMIT_AS), MiB
    processes: int = 64  # process-count limit (RLIMIT_NPROC) of the uid the candidate runs as
    file_size_mb: int = 16  # largest file a program may write (RLIMIT_FSIZE), MiB
    open_files: int = 64  # open file descriptors per program (RLIMIT_NOFILE)
    output_mb: int = 64  # results one program may send back (its encoded return values), MiB
    recursion_limit: int = 1000  # sys.setrecursionlimit for the candidate (Python's default)
    uid: int = 65534  # the unprivileged uid candidates run as when the trainer is root (nobody)


@dataclass(frozen=True)
class Program:
    """One candidate to run: its module text, the function to call, one argument list per test."""

    source: str
    entry_point: str
    inputs: list = field(default_factory=list)


@dataclass(frozen=True)
class Outcome:
    """What happened to one program.

    status: ok (the module loaded and every input ran) | syntax_error | missing_entry_point |
      timeout (an input or the whole program ran out of time) | crashed (the module raised, the
      process died: os._exit, a signal, a resource limit; or its worker died).
    outputs: one per input that ran, in order: ("ok", encoded value) | ("error", exception type
      name) | ("timeout", None); shorter than the inputs when the program was stopped.
    """

    status: str
    outputs: list = field(default_factory=list)

    def values(self) -> list[Any]:
        """The decoded return values (None where an input raised or timed out)."""
        return [decode(value) if kind == "ok" else None for kind, value in self.outputs]


_LIVE: "weakref.WeakSet[Sandbox]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for sandbox in list(_LIVE):
        sandbox.close()


def _bwrap_diagnosis(stderr: str) -> str:
    """Why bubblewrap cannot start, in one line."""
    detail = stderr.strip().splitlines()[-1] if stderr.strip() else "no message"
    if os.geteuid() == 0:
        return (
            f"bubblewrap cannot start as root ({detail}): root here lacks CAP_SYS_ADMIN to create namespaces "
            "(a container without --privileged or seccomp/apparmor rules?); allow namespaces, "
            "or use sandbox mode=process (limits only)"
        )
    settings = []
    for path in ("/proc/sys/kernel/unprivileged_userns_clone", "/proc/sys/user/max_user_namespaces",
                 "/proc/sys/kernel/apparmor_restrict_unprivileged_userns"):
        try:
            settings.append(f"{path.removeprefix('/proc/sys/').replace('/', '.')}={Path(path).read_text().strip()}")
        except OSError:
            pass
    return (
        f"bubblewrap cannot start ({detail}): not root, so it needs unprivileged user namespaces, which look "
        f"disabled here ({', '.join(settings) or 'no sysctl found'}); enable them (e.g. sysctl "
        "kernel.unprivileged_userns_clone=1 / user.max_user_namespaces=15000 / "
        "kernel.apparmor_restrict_unprivileged_userns=0), run as root, or use sandbox mode=process (limits only)"
    )


class _Worker:
    """One warm worker process and what it is doing."""

    def __init__(self, command: list[str], env: dict[str, str]):
        self.stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, env=env,
            start_new_session=True, close_fds=True,
        )
        os.set_blocking(self.process.stdout.fileno(), False)
        self.buffer = b""
        self.ready = False
        self.started = time.monotonic()
        self.job: int | None = None  # index of the program it runs
        self.deadline = self.started + START_TIMEOUT_S

    def send(self, index: int, line: bytes, limit_s: float) -> None:
        self.job = index
        self.deadline = time.monotonic() + limit_s
        self.process.stdin.write(line)
        self.process.stdin.flush()

    def read_lines(self) -> tuple[list[bytes], bool]:
        """Lines now available, and whether the worker closed its output (it died)."""
        try:
            chunk = os.read(self.process.stdout.fileno(), 1 << 20)
        except BlockingIOError:
            return [], False
        if not chunk:
            return [], True
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        return lines, False

    def error_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()[-4000:].decode(errors="replace")

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except OSError:
            pass
        for stream in (self.process.stdin, self.process.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.process.wait()
        self.stderr.close()


class Sandbox:
    """Warm sandboxed workers; ``run`` scores a batch of programs in parallel."""

    def __init__(self, config: SandboxConfig | None = None):
        self.config = config = config or SandboxConfig()
        if config.mode not in MODES:
            raise ConfigError(f"sandbox mode={config.mode!r}: expected one of {', '.join(MODES)}")
        if config.workers < 0:
            raise ConfigError(f"sandbox workers={config.workers}: expected 0 (one per core) or more")
        self.n_workers = config.workers or len(os.sched_getaffinity(0))
        self._closed = False
        self._own_tmp: str | None = None
        self._workers: list[_Worker] = []
        python = os.path.realpath(sys.executable)
        if config.mode == "bwrap":
            bwrap = shutil.which("bwrap")
            if bwrap is None:
                raise SandboxError(
                    "bubblewrap is not installed: apt-get install bubblewrap (or dnf/pacman install bubblewrap), "
                    "or use sandbox mode=process (limits only)"
                )
            prefix = [bwrap, *self._bwrap_arguments(python)]
            tmp_dir = "/tmp"
        else:
            prefix = []
            self._own_tmp = tempfile.mkdtemp(prefix="rlreason-sandbox-")
            os.chmod(self._own_tmp, 0o711)
            tmp_dir = self._own_tmp
            print(PROCESS_MODE_WARNING.format(uid=config.uid if os.geteuid() == 0 else os.geteuid()), file=sys.stderr)
        limits = {**asdict(config), "tmp_dir": tmp_dir, "own_pid_namespace": config.mode == "bwrap",
                  "parent_pid": os.getpid()}
        self._command = [*prefix, python, "-I", "-S", "-B", "-c", WORKER_SOURCE, json.dumps(limits)]
        self._env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
        _LIVE.add(self)
        try:
            self._workers = [self._start_worker() for _ in range(self.n_workers)]
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _bwrap_arguments(python: str) -> list[str]:
        """bubblewrap's options: namespaces, a read-only view of /usr and the interpreter, private /tmp."""
        args = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
        if os.geteuid() == 0:
            # Root needs no user namespace; the worker keeps only what it needs to drop each
            # child to the unprivileged uid, signal it and clean up after it.
            args += ["--cap-drop", "ALL"]
            for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_KILL", "CAP_DAC_OVERRIDE", "CAP_FOWNER"):
                args += ["--cap-add", cap]
        else:
            args += ["--unshare-user"]
        args += ["--die-with-parent", "--new-session", "--clearenv",
                 "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LC_ALL", "C.UTF-8",
                 "--ro-bind", "/usr", "/usr"]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
            if os.path.islink(top):
                args += ["--symlink", os.readlink(top), top]
            elif os.path.isdir(top):
                args += ["--ro-bind", top, top]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        home = os.path.realpath(sys.base_prefix)
        if not home.startswith("/usr/"):
            parts = Path(home).parts
            for depth in range(2, len(parts)):  # parents world-traversable (bwrap makes them 0700)
                args += ["--perms", "0755", "--dir", str(Path(*parts[:depth]))]
            args += ["--ro-bind", home, home]
        if not python.startswith(("/usr/", home + "/")):
            args += ["--ro-bind", python, python]
        return [*args, "--chdir", "/tmp", "--"]

    def _start_worker(self) -> _Worker:
        return _Worker(self._command, self._env)

    def _wait_ready(self) -> None:
        """Block until every worker said ready (the first start also checks bubblewrap works)."""
        for worker in self._workers:
            if not worker.ready:
                self._await_ready(worker)

    def _await_ready(self, worker: _Worker) -> None:
        selector = selectors.DefaultSelector()
        selector.register(worker.process.stdout, selectors.EVENT_READ)
        try:
            while not worker.ready:
                remaining = worker.deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    if remaining <= 0:
                        raise SandboxError(f"a sandbox worker did not start within {START_TIMEOUT_S:.0f} s")
                    continue
                lines, dead = worker.read_lines()
                if lines and lines[0] == b"ready":
                    worker.ready = True
                elif dead or lines:
                    worker.process.wait()
                    self._start_failed(worker)
        finally:
            selector.close()

    def _start_failed(self, worker: _Worker) -> None:
        text = worker.error_text()
        if self.config.mode == "bwrap" and ("bwrap" in text or "namespace" in text.lower()):
            raise SandboxError(_bwrap_diagnosis(text))
        last = text.strip().splitlines()[-1] if text.strip() else f"exit status {worker.process.returncode}"
        raise SandboxError(f"a sandbox worker failed to start: {last}")

    def run(self, programs: list[Program]) -> list[Outcome]:
        """Run every program (in parallel over the workers); outcomes in the programs' order."""
        if self._closed:
            raise SandboxError("the sandbox is closed")
        config = self.config
        limit_s = config.completion_timeout_s + config.test_timeout_s + WORKER_GRACE_S
        requests = [
            (json.dumps({"source": p.source, "entry_point": p.entry_point,
                         "inputs": [encode(list(args)) for args in p.inputs]}) + "\n").encode()
            for p in programs
        ]
        outcomes: list[Outcome | None] = [None] * len(programs)
        pending = deque(range(len(programs)))
        selector = selectors.DefaultSelector()
        for slot, worker in enumerate(self._workers):
            selector.register(worker.process.stdout, selectors.EVENT_READ, slot)

        def replace(slot: int) -> None:
            worker = self._workers[slot]
            selector.unregister(worker.process.stdout)
            worker.kill()
            fresh = self._workers[slot] = self._start_worker()
            selector.register(fresh.process.stdout, selectors.EVENT_READ, slot)

        def finish(slot: int, outcome: Outcome) -> None:
            worker = self._workers[slot]
            outcomes[worker.job] = outcome
            worker.job = None

        try:
            while pending or any(w.job is not None for w in self._workers):
                for slot, worker in enumerate(self._workers):
                    if worker.ready and worker.job is None and pending:
                        index = pending.popleft()
                        try:
                            worker.send(index, requests[index], limit_s)
                        except (BrokenPipeError, OSError):
                            pending.appendleft(index)  # it died while idle: replace, then resend
                            worker.job = None
                            replace(slot)
                now = time.monotonic()
                timeout = max(0.0, min(w.deadline for w in self._workers) - now)
                for key, _ in selector.select(timeout):
                    slot = key.data
                    worker = self._workers[slot]
                    lines, dead = worker.read_lines()
                    for line in lines:
                        if not worker.ready:
                            if line != b"ready":
                                self._start_failed(worker)
                            worker.ready = True
                            worker.deadline = float("inf")
                            continue
                        reply = json.loads(line)
                        finish(slot, Outcome(reply["status"], [tuple(o) for o in reply["outputs"]]))
                        worker.deadline = float("inf")
                    if dead:
                        if not worker.ready:
                            worker.process.wait()
                            self._start_failed(worker)
                        if worker.job is not None:  # the candidate killed its worker
                            finish(slot, Outcome("crashed", []))
                        replace(slot)
                now = time.monotonic()
                for slot, worker in enumerate(self._workers):
                    if worker.deadline <= now:
                        if not worker.ready:
                            raise SandboxError(f"a sandbox worker did not start within {START_TIMEOUT_S:.0f} s")
                        finish(slot, Outcome("timeout", []))
                        replace(slot)
        except BaseException:
            # An interrupted batch leaves workers mid-program: start over with fresh ones.
            for slot, worker in enumerate(self._workers):
                if worker.job is not None:
                    worker.kill()
                    self._workers[slot] = self._start_worker()
            raise
        finally:
            selector.close()
        return outcomes  # type: ignore[return-value]

    def close(self) -> None:
        """Stop every worker (and with it everything it started); idempotent."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            worker.kill()
        self._workers = []
        if self._own_tmp:
            shutil.rmtree(self._own_tmp, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> "Sandbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
