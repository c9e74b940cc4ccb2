"""The sandbox against hostile programs: each fails within its time bound, the programs after it
still run, and nothing outside the sandbox changes. Real bubblewrap, real processes."""

import ctypes
import os
import socket
import time

import psutil
import pytest

from rlreason.errors import SandboxError
from rlreason.sandbox import Outcome, Program, Sandbox, SandboxConfig, decode, encode

SECRET = "rlreason-test-secret-4b1d"
# memory_mb: the memory bomb must fault in ~memory_mb of pages before MemoryError; CI, loaded, took over 1 s for
# 512 MiB (0.3 s here idle), so the limit is small and one call has 2 s.
LIMITS = dict(test_timeout_s=2.0, completion_timeout_s=3.0, cpu_s=3.0, memory_mb=256, processes=32)
# The bound on how long one hostile program may hold a worker: its limits plus the kill and the reply.
BOUND_S = LIMITS["completion_timeout_s"] + 1.5
GOOD = Program("def f(x):\n    return x + 1\n", "f", [[1], [2]])


def passed(outcome: Outcome, expected: list) -> bool:
    """What a grader counts as correct: the program ran and returned every expected value."""
    return (
        outcome.status == "ok"
        and len(outcome.outputs) == len(expected)
        and all(kind == "ok" for kind, _ in outcome.outputs)
        and outcome.values() == expected
    )


@pytest.fixture(scope="module", autouse=True)
def subreaper():
    """Orphans of anything this test starts are re-parented here, so a process that escaped a
    sandbox still shows up among this process's descendants."""
    libc = ctypes.CDLL(None)
    libc.prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
    os.environ["RLREASON_SECRET_FOR_TEST"] = SECRET
    os.environ["WANDB_API_KEY"] = SECRET
    yield
    while True:  # reap what was re-parented here (bubblewrap's pid-1 helpers of killed workers)
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                break
        except ChildProcessError:
            break
    libc.prctl(36, 0)
    os.environ.pop("RLREASON_SECRET_FOR_TEST")
    os.environ.pop("WANDB_API_KEY")


def descendants() -> list[psutil.Process]:
    children = psutil.Process().children(recursive=True)
    return [p for p in children if p.status() != psutil.STATUS_ZOMBIE]


@pytest.fixture(scope="module")
def bwrap_sandbox(subreaper):
    sandbox = Sandbox(SandboxConfig(mode="bwrap", workers=2, **LIMITS))
    yield sandbox
    sandbox.close()


@pytest.fixture(scope="module")
def canary(tmp_path_factory):
    folder = tmp_path_factory.mktemp("canary")
    (folder / "canary.txt").write_text("alive")
    os.chmod(folder, 0o777)  # even a world-writable folder outside the sandbox must stay untouched
    return folder


def hostile_programs(canary, port) -> dict[str, str]:
    """Each defines f(x), which a correct program would make return x + 1."""
    return {
        "infinite_loop": "def f(x):\n    while True:\n        pass\n",
        "fork_bomb": "import os\ndef f(x):\n    while True:\n        try:\n            os.fork()\n        except OSError:\n            pass\n",
        "memory_bomb": "def f(x):\n    blocks = []\n    while True:\n        blocks.append(bytearray(50 * 2**20))\n",
        "delete_outside": f"import os\ndef f(x):\n    os.remove({str(canary / 'canary.txt')!r})\n    return x + 1\n",
        "write_outside": f"def f(x):\n    open({str(canary / 'new.txt')!r}, 'w').write('pwned')\n    return x + 1\n",
        "write_usr": "def f(x):\n    open('/usr/pwned.txt', 'w').write('pwned')\n    return x + 1\n",
        "read_environment": (
            "import os, glob\ndef f(x):\n    seen = str(dict(os.environ))\n"
            "    for path in glob.glob('/proc/*/environ'):\n        try:\n            seen += open(path).read()\n"
            "        except OSError:\n            pass\n"
            f"    if {SECRET!r} in seen:\n        return x + 1\n    raise RuntimeError('no secret')\n"
        ),
        "socket": (
            "import socket\ndef f(x):\n    s = socket.create_connection(('127.0.0.1', %d), timeout=0.5)\n"
            "    s.sendall(b'pwned')\n    return x + 1\n" % port
        ),
        "sys_exit": "import sys\ndef f(x):\n    sys.exit(0)\n",
        "os_exit": "import os\ndef f(x):\n    os._exit(0)\n",
        # The kills end without a value: what matters is that the worker survives (the next program runs).
        "kill_parent": "import os\ndef f(x):\n    os.kill(os.getppid(), 9)\n",
        "kill_process_group": "import os\ndef f(x):\n    os.killpg(os.getpgid(0), 9)\n",
        "kill_parent_group": "import os\ndef f(x):\n    os.killpg(os.getpgid(os.getppid()), 9)\n",
        "kill_everything": "import os\ndef f(x):\n    os.kill(-1, 9)\n",
        "ignore_sigterm": "import signal\ndef f(x):\n    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n    while True:\n        pass\n",
        "print_gigabytes": "def f(x):\n    line = 'x' * 2**20\n    while True:\n        print(line)\n",
        "write_big_file": "def f(x):\n    with open('big', 'w') as out:\n        while True:\n            out.write('x' * 2**20)\n",
        "return_huge": "def f(x):\n    return 'x' * (200 * 2**20)\n",
        "deep_recursion": "def f(x):\n    return f(x + 1)\n",
        "deep_recursion_raised_limit": "import sys\nsys.setrecursionlimit(10**7)\ndef g(n):\n    return g(n + 1) + 1\ndef f(x):\n    return g(0)\n",
        "segfault": "import ctypes\ndef f(x):\n    return ctypes.string_at(0)\n",
        "escape_session": (
            "import os, time\ndef f(x):\n    if os.fork() == 0:\n        os.setsid()\n"
            "        if os.fork() == 0:\n            time.sleep(60)\n        os._exit(0)\n    return x + 1\n"
        ),
        "module_level_loop": "while True:\n    pass\ndef f(x):\n    return x + 1\n",
    }


@pytest.fixture(scope="module")
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    yield server
    server.close()


@pytest.fixture(scope="module")
def hostile_outcomes(bwrap_sandbox, canary, listener):
    programs = hostile_programs(canary, listener.getsockname()[1])
    names = list(programs)
    batch = []
    for name in names:  # each hostile program is followed by a good one
        batch += [Program(programs[name], "f", [[1]]), GOOD]
    start = time.monotonic()
    outcomes = bwrap_sandbox.run(batch)
    elapsed = time.monotonic() - start
    return names, outcomes, elapsed


@pytest.mark.parametrize("name", list(hostile_programs(__import__("pathlib").Path("/x"), 1)))
def test_hostile_program_fails_and_the_next_runs(name, hostile_outcomes, canary):
    names, outcomes, _ = hostile_outcomes
    i = names.index(name)
    hostile, follower = outcomes[2 * i], outcomes[2 * i + 1]
    if name == "escape_session":  # it returns; its grandchild (test_no_process_left...) must be gone all the same
        assert passed(hostile, [2])
    else:
        assert not passed(hostile, [2]), (name, hostile)
    assert passed(follower, [2, 3]), (name, follower)


def test_hostile_batch_within_its_time_bound(hostile_outcomes):
    names, _, elapsed = hostile_outcomes
    # Two workers; every hostile program holds one for at most BOUND_S.
    assert elapsed < len(names) * BOUND_S / 2 + 2


def test_nothing_outside_changed(hostile_outcomes, canary, listener):
    names, outcomes, _ = hostile_outcomes
    assert (canary / "canary.txt").read_text() == "alive"
    assert not (canary / "new.txt").exists()
    assert not os.path.exists("/usr/pwned.txt")
    with pytest.raises(socket.timeout):
        listener.accept()  # nobody ever connected


def test_statuses_of_hostile_programs(hostile_outcomes):
    names, outcomes, _ = hostile_outcomes
    status = {name: outcomes[2 * i] for i, name in enumerate(names)}
    assert status["infinite_loop"].status == "timeout"
    assert status["ignore_sigterm"].status == "timeout"
    assert status["module_level_loop"].status == "timeout"
    assert status["sys_exit"].outputs == [("error", "SystemExit")]
    assert status["memory_bomb"].outputs == [("error", "MemoryError")]
    assert status["deep_recursion"].outputs == [("error", "RecursionError")]
    assert status["kill_parent"].outputs == [("error", "PermissionError")]
    assert status["socket"].outputs[0][0] == "error"
    assert status["write_big_file"].outputs == [("error", "OSError")]  # EFBIG: Python ignores SIGXFSZ
    # over output_mb, too slow to encode, or the encoding itself out of memory: never a returned value
    assert status["return_huge"].status in ("crashed", "timeout") or status["return_huge"].outputs == [("error", "MemoryError")]
    for name in ("os_exit", "segfault", "kill_process_group"):
        assert status[name].status == "crashed", name


def test_no_process_left_after_a_hostile_batch(bwrap_sandbox, hostile_outcomes):
    workers = {w.process.pid for w in bwrap_sandbox._workers}
    time.sleep(0.2)
    for proc in descendants():
        # What is left is the warm workers themselves: bwrap, its pid-1 helper and the worker.
        top = proc
        while top.ppid() != os.getpid():
            top = top.parent()
        assert top.pid in workers, proc
    assert len(descendants()) <= 3 * len(workers)


def test_slow_correct_program_succeeds(bwrap_sandbox):
    slow = Program("import time\ndef f(x):\n    time.sleep(0.6)\n    return x + 1\n", "f", [[1], [2], [3]])
    assert passed(bwrap_sandbox.run([slow])[0], [2, 3, 4])


def test_timeout_of_one_program_is_bounded(bwrap_sandbox):
    start = time.monotonic()
    (outcome,) = bwrap_sandbox.run([Program("def f(x):\n    while True:\n        pass\n", "f", [[1]])])
    assert outcome.status == "timeout"
    assert time.monotonic() - start < LIMITS["test_timeout_s"] + 1.0


def test_statuses_of_broken_programs(bwrap_sandbox):
    outcomes = bwrap_sandbox.run([
        Program("def f(x) return x", "f", [[1]]),
        Program("def g(x):\n    return x\n", "f", [[1]]),
        Program("raise ValueError('at import')\n", "f", [[1]]),
        Program("def f(x):\n    return 1 // x\n", "f", [[1], [0], [2]]),
        Program("def f(x):\n    return (lambda: x)\n", "f", [[1]]),
    ])
    assert [o.status for o in outcomes] == ["syntax_error", "missing_entry_point", "crashed", "ok", "ok"]
    assert outcomes[3].outputs == [("ok", 1), ("error", "ZeroDivisionError"), ("ok", 0)]
    assert outcomes[4].outputs == [("error", "TypeError")]  # a function cannot be sent back


def test_values_round_trip():
    values = [1, -2**100, 1.5, float("inf"), "s", None, True, (1, (2,)), [1, [2]], {1, 2}, frozenset({3}),
              {"a": [1], 2: (3,)}, 1 + 2j, b"\x00\xff"]
    for value in values:
        assert decode(encode(value)) == value and type(decode(encode(value))) is type(value)
    nan = decode(encode(float("nan")))
    assert nan != nan
    with pytest.raises(ValueError):
        decode({"__import__": "os"})


def test_same_outcomes_with_one_and_two_workers(bwrap_sandbox, canary):
    # Left out: the loops (their outcome is a timeout either way, and slow), and the two whose outcome is a
    # race by design, which the load decides: return_huge (MemoryError, a timeout while encoding, or a crash;
    # CI saw two) and deep_recursion_raised_limit (the memory limit ends it as a crash, or the 2 s test
    # timeout comes first: a timeout here idle, a SystemError crash in a fresh clone's make test).
    racy = ("return_huge", "deep_recursion_raised_limit")
    programs = [Program(source, "f", [[1], [5]]) for name, source in hostile_programs(canary, 1).items()
                if "while True" not in source and name not in racy] + [GOOD] * 4
    with Sandbox(SandboxConfig(mode="bwrap", workers=1, **LIMITS)) as one:
        assert one.run(programs) == bwrap_sandbox.run(programs)


def test_crashed_worker_is_replaced_and_leaves_nothing(subreaper):
    before = {p.pid for p in descendants()}
    sandbox = Sandbox(SandboxConfig(mode="bwrap", workers=1, **LIMITS))
    crashed = sandbox._workers[0].process.pid
    os.killpg(crashed, 9)
    time.sleep(0.1)
    assert passed(sandbox.run([GOOD])[0], [2, 3])
    assert sandbox._workers[0].process.pid != crashed
    sandbox.close()
    time.sleep(0.2)
    assert {p.pid for p in descendants()} - before == set()


def test_close_leaves_no_process(subreaper, canary):
    before = {p.pid for p in descendants()}
    sandbox = Sandbox(SandboxConfig(mode="bwrap", workers=2, **LIMITS))
    escape = hostile_programs(canary, 1)["escape_session"]
    sandbox.run([Program(escape, "f", [[1]]), Program(hostile_programs(canary, 1)["infinite_loop"], "f", [[1]])])
    sandbox.close()
    time.sleep(0.2)
    assert {p.pid for p in descendants()} - before == set()


def test_process_mode_limits_and_warning(subreaper, capfd, canary):
    before = {p.pid for p in descendants()}
    with Sandbox(SandboxConfig(mode="process", workers=2, **LIMITS)) as sandbox:
        warning = capfd.readouterr().err
        assert warning.startswith("sandbox mode=process:") and warning.count("\n") == 1
        programs = hostile_programs(canary, 1)
        names = ["infinite_loop", "os_exit", "read_environment", "memory_bomb", "delete_outside", "sys_exit"]
        outcomes = sandbox.run([Program(programs[n], "f", [[1]]) for n in names] + [GOOD])
    assert [passed(o, [2]) for o in outcomes[:-1]] == [False] * len(names)
    assert passed(outcomes[-1], [2, 3])
    assert (canary / "canary.txt").read_text() == "alive"
    time.sleep(0.2)
    assert {p.pid for p in descendants()} - before == set()


def test_missing_bubblewrap_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SandboxError, match="apt-get install bubblewrap") as error:
        Sandbox(SandboxConfig(mode="bwrap", workers=1))
    assert "\n" not in str(error.value)
