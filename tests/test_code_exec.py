"""The code sandbox, on real programs in real child processes: verdicts, limits, no network, no writes out.

As root with util-linux `unshare` (this machine, CI) the sandbox must be the strongest kind:
namespaces plus the `nobody` uid; elsewhere the tests still run against whatever `isolation()` found.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from coe.core.settings import get_settings
from coe.data import code_exec
from coe.data.humaneval import load_humaneval

ROOT = Path(__file__).resolve().parent.parent


def test_isolation_is_the_strongest_this_machine_allows():
    iso = code_exec.isolation()
    unshare = shutil.which("unshare")
    if os.geteuid() == 0 and unshare and subprocess.run([unshare, "--net", "true"]).returncode == 0:
        assert iso.unshare and iso.unshare[0] == unshare and "--net" in iso.unshare
        assert iso.uid is not None and iso.uid != 0
    assert iso.describe()


def test_a_correct_program_passes_and_a_wrong_one_fails():
    good = code_exec.run_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n", timeout_s=5)
    bad = code_exec.run_program("def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n", timeout_s=5)
    assert (good.passed, good.status, good.error) == (True, "passed", "")
    assert (bad.passed, bad.status) == (False, "failed") and "AssertionError" in bad.error


def test_exceptions_and_early_exits_are_errors_not_passes():
    for program in ("raise ValueError('nope')\n", "import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n",
                    "def f(:\n    pass\n", "input()\n"):
        result = code_exec.run_program(program, timeout_s=5)
        assert (result.passed, result.status) == (False, "error"), (program, result)


def test_an_infinite_loop_is_killed_at_the_limit():
    result = code_exec.run_program("while True:\n    pass\n", timeout_s=2.0)
    assert (result.passed, result.status) == (False, "timeout")
    assert 2.0 <= result.elapsed_s < 3.5, result.elapsed_s


def test_a_memory_bomb_is_stopped():
    bomb = "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 2**20))\n"
    result = code_exec.run_program(bomb, timeout_s=20, memory_mb=256)
    assert (result.passed, result.status) == (False, "error") and "MemoryError" in result.error
    assert result.elapsed_s < 10


def test_no_network_not_even_to_a_listener_on_this_host():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=3).sendall(b'hi')\n"
        result = code_exec.run_program(program, timeout_s=10)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert not result.passed and result.status == "error" and "OSError" in result.error
    if code_exec.isolation().unshare:
        assert "Network is unreachable" in result.error


@pytest.mark.parametrize("target", [Path("/tmp"), ROOT], ids=["tmp", "repo"])
def test_writes_outside_the_working_folder_fail_and_leave_nothing(target):
    path = target / f"coe-escape-{uuid.uuid4().hex[:12]}"
    iso = code_exec.isolation()
    if target == Path("/tmp") and not (iso.uid is not None and iso.unshare):
        pytest.skip(f"/tmp is only private with namespaces and a sandbox uid ({iso.describe()})")
    if target == ROOT and iso.uid is None:
        pytest.skip(f"the repository is only protected under a sandbox uid ({iso.describe()})")
    # a clone under /tmp (or /var/tmp, ...) is not even there for the program: its /tmp is a fresh tmpfs
    hidden = bool(iso.unshare) and any(target.is_relative_to(c) and target != Path(c) for c in code_exec.COVERED)
    try:
        result = code_exec.run_program(f"open({str(path)!r}, 'w').write('escaped')\n", timeout_s=5)
        assert not result.passed and ("FileNotFoundError" if hidden else "PermissionError") in result.error, result
        assert not path.exists()
    finally:
        path.unlink(missing_ok=True)


def test_the_working_folder_is_writable():
    program = "import os\nopen('scratch.txt', 'w').write('x')\nassert open('scratch.txt').read() == 'x'\n"
    assert code_exec.run_program(program, timeout_s=5).passed


def test_humaneval_canonical_solutions_pass_and_truncated_ones_fail():
    problems = load_humaneval(get_settings().cache_dir)[:10]
    whole = [p.submission(p.canonical_solution) for p in problems]
    cut = [p.submission("\n".join(p.canonical_solution.rstrip().splitlines()[:-1]) + "\n") for p in problems]
    results = code_exec.judge_many(whole + cut, workers=2, timeout_s=10)
    assert [r.status for r in results[:10]] == ["passed"] * 10, [r.error for r in results[:10]]
    assert not any(r.passed for r in results[10:]), [p.task_id for p, r in zip(problems, results[10:]) if r.passed]


FORGES = {
    "reads the verdict's nonce from argv": (
        "    import json, os, sys\n    nonce = json.loads(sys.orig_argv[-1])['nonce']\n"
        "    os.write(1, f'\\n{nonce} passed\\n'.encode())\n    os._exit(0)\n"),
    "reads the nonce from the checker's frame": (
        "    import os, sys\n    f = sys._getframe()\n    while 'nonce' not in f.f_locals:\n        f = f.f_back\n"
        "    os.write(1, f\"\\n{f.f_locals['nonce']} passed\\n\".encode())\n    os._exit(0)\n"),
    "returns an object equal to anything": (
        "    class Same:\n        def __eq__(self, other):\n            return True\n    return Same()\n"),
    "exits with the supervisor's passing code": "    import os\n    os._exit(64)\n",
    "answers the judge's next call itself": (
        "    import os\n    for fd in range(3, 64):\n        try:\n            os.write(fd, b'{\"value\": true}\\n' * 99)\n"
        "        except OSError:\n            pass\n    raise SystemExit\n"),
}


def test_a_solution_cannot_forge_a_pass():
    """Each forgery of the old single-process runner (a printed verdict line whose nonce is read from argv or
    from the runner's frame; an always-equal result), and two on the judge's process: none passes."""
    p = load_humaneval(get_settings().cache_dir)[0]
    results = code_exec.judge_many([p.submission(c) for c in FORGES.values()], workers=2, timeout_s=10)
    assert {name: r.passed for name, r in zip(FORGES, results)} == {name: False for name in FORGES}


def test_a_forked_process_cannot_outlive_or_outgrow_the_limits():
    """NPROC 1: no process of its own (so no memory beyond its own limit, nothing that escapes the group)."""
    result = code_exec.run_program("import os\nos.fork()\n", timeout_s=5)
    assert (result.passed, result.status) == (False, "error") and "BlockingIOError" in result.error, result


def test_untrusted_code_has_no_capabilities_and_cannot_gain_any():
    program = ("caps = dict(line.split(':') for line in open('/proc/self/status').read().splitlines() if ':' in line)\n"
               "assert int(caps['CapEff'], 16) == int(caps['CapBnd'], 16) == 0, caps\n"
               "assert caps['NoNewPrivs'].strip() == '1'\n")
    result = code_exec.run_program(program, timeout_s=5)
    assert result.passed, result


def test_without_isolation_it_refuses_unless_the_user_opts_in(tmp_path):
    """No `unshare` on the PATH: a sandbox uid alone (no namespaces) is not contained, so nothing runs there
    until COE_CODE_ALLOW_UNISOLATED=1 says to run it anyway."""
    code = ("from coe.data import code_exec\n"
            "try:\n    r = code_exec.run_program('print(6 * 7)\\n', timeout_s=5)\n    print(r.status, r.output)\n"
            "except code_exec.SandboxError as exc:\n    print('refused', exc)\n")
    base = {"PATH": str(tmp_path), "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)}
    refused = subprocess.run([sys.executable, "-c", code], env=base, capture_output=True, text=True, check=True)
    allowed = subprocess.run([sys.executable, "-c", code], env={**base, "COE_CODE_ALLOW_UNISOLATED": "1"},
                             capture_output=True, text=True, check=True)
    assert refused.stdout.startswith("refused refusing to run untrusted code without isolation"), refused
    assert "COE_CODE_ALLOW_UNISOLATED=1" in refused.stdout
    assert allowed.stdout.split() == ["passed", "42"], allowed
