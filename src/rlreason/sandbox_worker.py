"""The sandbox's worker: a warm Python that forks one child per program (standard library only).

The trainer never imports candidate code; it starts this file's text with ``python -I -S -B -c``
(inside bubblewrap in ``bwrap`` mode) and talks to it over its stdin/stdout, one JSON line per
program each way. The worker itself runs only this trusted code: for each program it forks a
child that drops to an unprivileged uid (when the worker is root), starts its own session, sets
resource limits, runs the candidate on every input and writes one JSON line per result to a
pipe. The worker enforces the wall-clock limits and kills the child's process group (and, inside
its own pid namespace, every other process there) when the child is done or out of time.

``encode``/``decode`` live here so that child and trainer share one serialisation: a JSON form in
which every non-JSON value is tagged, and decoding constructs builtin types only.
"""

import json
import math
import os
import resource
import select
import signal
import sys
import time

JSON_SCALARS = (str, bool, int, type(None))


def encode(value):
    """A JSON-safe form of a builtin value: lists stay lists, everything else that JSON cannot hold
    exactly is a one-key dict ({"tuple": [...]}, {"set": [...]}, {"frozenset": [...]},
    {"dict": [[k, v], ...]}, {"complex": [re, im]}, {"float": "nan"|"inf"|"-inf"}, {"bytes": hex}).
    Raises TypeError on anything else (a generator, a class instance, ...)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if math.isnan(value):
            return {"float": "nan"}
        if math.isinf(value):
            return {"float": "inf" if value > 0 else "-inf"}
        return float(value)
    if isinstance(value, complex):
        return {"complex": [encode(value.real), encode(value.imag)]}
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, tuple):
        return {"tuple": [encode(v) for v in value]}
    if isinstance(value, frozenset):
        return {"frozenset": [encode(v) for v in value]}
    if isinstance(value, set):
        return {"set": [encode(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    if isinstance(value, (bytes, bytearray)):
        return {"bytes": bytes(value).hex()}
    raise TypeError(f"cannot encode a {type(value).__name__}")


def decode(obj):
    """The value ``encode`` made ``obj`` from; only builtin types are constructed."""
    if isinstance(obj, JSON_SCALARS) or isinstance(obj, float):
        return obj
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    if isinstance(obj, dict) and len(obj) == 1:
        (tag, body), = obj.items()
        if tag == "tuple":
            return tuple(decode(v) for v in body)
        if tag == "set":
            return {decode(v) for v in body}
        if tag == "frozenset":
            return frozenset(decode(v) for v in body)
        if tag == "dict":
            return {decode(k): decode(v) for k, v in body}
        if tag == "complex":
            return complex(decode(body[0]), decode(body[1]))
        if tag == "float":
            return float(body)
        if tag == "bytes":
            return bytes.fromhex(body)
    raise ValueError(f"not an encoded value: {str(obj)[:80]}")


def _set_limits(limits):
    mb = 1024 * 1024
    for name, soft in (
        ("RLIMIT_AS", limits["memory_mb"] * mb),
        ("RLIMIT_DATA", limits["memory_mb"] * mb),
        ("RLIMIT_FSIZE", limits["file_size_mb"] * mb),
        ("RLIMIT_NOFILE", limits["open_files"]),
        ("RLIMIT_NPROC", limits["processes"]),
        ("RLIMIT_CORE", 0),
    ):
        resource.setrlimit(getattr(resource, name), (soft, soft))
    cpu = int(math.ceil(limits["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))


def _child(request, limits, write_fd, workdir):
    """Runs in the forked child: never returns (os._exit)."""
    status = 0
    try:
        os.setsid()
        if os.geteuid() == 0:
            uid = limits["uid"]
            os.chown(workdir, uid, uid)
            os.setgroups([])
            os.setresgid(uid, uid, uid)
            os.setresuid(uid, uid, uid)
        os.chdir(workdir)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, 65536)
        _set_limits(limits)
        out = os.fdopen(write_fd, "w", buffering=1)

        def emit(obj):
            out.write(json.dumps(obj) + "\n")
            out.flush()

        sys.setrecursionlimit(limits["recursion_limit"])
        try:
            code = compile(request["source"], "<candidate>", "exec")
        except BaseException:  # SyntaxError, ValueError (NUL bytes), RecursionError, MemoryError
            emit({"status": "syntax_error"})
            os._exit(0)
        namespace = {"__name__": "__candidate__", "__builtins__": __builtins__}
        try:
            exec(code, namespace)
        except BaseException as exc:
            emit({"status": "crashed", "error": type(exc).__name__})
            os._exit(0)
        function = namespace.get(request["entry_point"])
        if not callable(function):
            emit({"status": "missing_entry_point"})
            os._exit(0)
        emit({"status": "started"})
        for encoded in request["inputs"]:
            try:
                args = decode(encoded)
                result = ("ok", encode(function(*args)))
            except BaseException as exc:  # SystemExit and KeyboardInterrupt are results like any other
                result = ("error", type(exc).__name__)
            try:
                emit(result)
            except BaseException as exc:  # an encoded result JSON cannot write (e.g. too deep)
                emit(("error", type(exc).__name__))
        emit({"status": "done"})
    except BaseException:
        status = 1
    os._exit(status)


def _kill_all_but_me():
    """Inside the worker's own pid namespace: kill every process but pid 1 (bubblewrap) and us,
    so a child that escaped its process group (setsid, double fork) is gone too."""
    me = os.getpid()
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) not in (1, me):
            try:
                os.kill(int(name), signal.SIGKILL)
            except OSError:
                pass


def _reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run_program(request, limits, own_pid_namespace):
    """Fork a child for one program and collect its results within the time limits."""
    import shutil
    import tempfile

    workdir = tempfile.mkdtemp(prefix="run-", dir=limits["tmp_dir"])
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(request, limits, write_fd, workdir)
    os.close(write_fd)
    start = time.monotonic()
    completion_deadline = start + limits["completion_timeout_s"]
    test_deadline = start + limits["test_timeout_s"]
    outputs, status, buffer, received = [], None, b"", 0
    eof = False
    while status is None:
        now = time.monotonic()
        deadline = min(completion_deadline, test_deadline)
        if now >= deadline:
            status = "timeout"
            outputs.append(("timeout", None))
            break
        ready, _, _ = select.select([read_fd], [], [], deadline - now)
        if not ready:
            continue
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            eof = True
        received += len(chunk)
        if received > limits["output_mb"] * 1024 * 1024:
            status = "crashed"
            break
        buffer += chunk
        while b"\n" in buffer and status is None:
            line, buffer = buffer.split(b"\n", 1)
            message = json.loads(line)
            if isinstance(message, dict):
                if message["status"] == "started":
                    test_deadline = time.monotonic() + limits["test_timeout_s"]
                elif message["status"] == "done":
                    status = "ok"
                else:
                    status = message["status"]
            else:
                outputs.append(tuple(message))
                test_deadline = time.monotonic() + limits["test_timeout_s"]
        if eof and status is None:
            status = "crashed"  # os._exit, a signal (segfault, CPU limit, memory), ...
    os.close(read_fd)
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
    if own_pid_namespace:
        _kill_all_but_me()
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
    _reap()
    shutil.rmtree(workdir, ignore_errors=True)
    return {"status": status, "outputs": outputs}


def main():
    limits = json.loads(sys.argv[1])
    own_pid_namespace = limits["own_pid_namespace"]
    sys.set_int_max_str_digits(0)
    try:  # die with the trainer even outside bubblewrap (prctl PR_SET_PDEATHSIG = 1)
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
        if os.getppid() != limits["parent_pid"] and not own_pid_namespace:
            os._exit(1)
    except Exception:
        pass
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    stdin = sys.stdin.buffer
    stdout = sys.stdout.buffer
    stdout.write(b"ready\n")
    stdout.flush()
    for line in stdin:
        request = json.loads(line)
        reply = run_program(request, limits, own_pid_namespace)
        stdout.write(json.dumps(reply).encode() + b"\n")
        stdout.flush()


if __name__ == "__main__":
    main()
