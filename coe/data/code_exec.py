"""Run untrusted Python (model-written solutions) in sandboxed child processes, and judge it out of its reach.

Each run starts a fresh `python -I -S` supervisor (coe/data/sandbox_child.py) with an empty environment,
stdin closed, its own session (the whole process group is killed at the wall-time limit). It forks the
untrusted processes, each of which lowers its resource limits first (address space, CPU seconds, open
files, file size, no core dumps, and NPROC 1: no process or thread of its own, so the group's memory is
at most the solution's limit plus the judge's), empties its capabilities and sets no_new_privs. Its exit
code is the verdict. `judge` runs the tests in a second process that talks to the solution in plain
data only (sandbox_child.py says how), so a solution cannot forge a pass by printing, by reading the
judge's memory or by returning objects that compare equal to anything; `run_program` runs one program
whose output is all that counts.

Isolation, found once per process by trying the strongest first (`isolation()` says which):
1. as root with util-linux `unshare`: new network, mount, PID, IPC and UTS namespaces. No
   network at all (not even loopback is up); fresh root-owned tmpfs over /tmp, /var/tmp,
   /dev/shm and /run/lock, so the only writable folder is the working folder inside them,
   which vanishes with the namespace; the program runs as `nobody` (setgroups/setgid/setuid
   after the mounts), so it cannot write the repository or home either; when the PID
   namespace's first process dies the kernel kills every process left in it.
2. not root: a user namespace (`unshare --user --map-root-user`) for the network, the PID namespace and
   the private /tmp, with every capability dropped; the program keeps the caller's rights on the
   repository and home (it can write there).
3. anything weaker (no namespaces, or root without the `nobody` uid) is not contained: it is refused
   unless the user opts in with COE_CODE_ALLOW_UNISOLATED=1, and then logged as a warning.
Running as `nobody` needs an interpreter that `nobody` can read (a pyenv under /root is not),
so system interpreters are tried too; any Python 3.8+ will do, the programs use the stdlib.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from coe.core.settings import get_settings

log = logging.getLogger("coe.code_exec")

CHILD = Path(__file__).with_name("sandbox_child.py")
PASSED, FAILED, ERROR, TIMEOUT = 64, 65, 66, 67  # the supervisor's exit codes (sandbox_child.py)
JUDGE_MB = 256
COVERED = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
PRIVATE_WORK = "/tmp/work"
NAMESPACES = ("--net", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc", "--ipc", "--uts")
USER_NAMESPACES = ("--user", "--map-root-user", *NAMESPACES)
TAIL_CHARS = 600
PROBE = ("import collections, fractions, functools, hashlib, heapq, itertools, math, re, statistics, string, typing\n"
         "assert math.gcd(12, 18) == 6\n")

Status = Literal["passed", "failed", "timeout", "error"]


class SandboxError(RuntimeError):
    """No sandboxed child could be started here (not the program's fault)."""


@dataclass(frozen=True)
class ExecResult:
    passed: bool
    status: Status  # failed: an assertion of the tests failed; error: any other exception or exit
    error: str = ""  # the end of the program's output (its traceback) when it did not pass
    elapsed_s: float = 0.0
    output: str = ""  # the end of what the program printed (a program-of-thought answer is read from it)


@dataclass(frozen=True)
class Submission:
    """A solution and the tests that judge it: `tests` defines check(candidate), which is called with a stand-in
    for the solution's function `entry_point`; the tests' own helpers are defined in `tests` too."""

    solution: str
    tests: str
    entry_point: str


@dataclass(frozen=True)
class Isolation:
    python: str
    unshare: tuple[str, ...]  # the unshare command and its flags; () for none
    uid: int | None  # the uid the program runs as; None: the caller's
    gid: int | None = None

    @property
    def network(self) -> str:
        if self.unshare:
            return "network namespace (no interface up, not even loopback)"
        return "Python-level guard (socket constructors raise OSError; best effort)"

    @property
    def writes(self) -> str:
        if self.uid is not None and self.unshare:
            return f"uid {self.uid} and private tmpfs over {', '.join(COVERED)}: only its working folder"
        if self.uid is not None:
            return f"uid {self.uid}: not the repository or home, but world-writable folders (/tmp) stay writable"
        if self.unshare:
            return "private tmpfs over /tmp and friends; NOT protected elsewhere (the caller's uid)"
        return "NOT contained (the caller's uid, no namespaces)"

    @property
    def contained(self) -> bool:
        """Namespaces, and an identity without privileges: the sandbox uid, or a user namespace."""
        return bool(self.unshare) and (self.uid is not None or "--user" in self.unshare)

    def describe(self) -> str:
        return f"python {self.python}; network: {self.network}; writes: {self.writes}"


def _sandbox_ids() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _candidates() -> list[Isolation]:
    unshare = shutil.which("unshare")
    seen, pythons = set(), []
    for p in (sys.executable, getattr(sys, "_base_executable", None), "/usr/bin/python3", shutil.which("python3")):
        if p and os.path.exists(p) and os.path.realpath(p) not in seen:
            seen.add(os.path.realpath(p))
            pythons.append(p)
    if os.geteuid() != 0:
        user_ns = [Isolation(sys.executable, (unshare, *USER_NAMESPACES), None)] if unshare else []
        return user_ns + [Isolation(sys.executable, (), None)]
    uid, gid = _sandbox_ids()
    out = [Isolation(p, (unshare, *NAMESPACES), uid, gid) for p in pythons] if unshare else []
    out += [Isolation(p, (), uid, gid) for p in pythons]
    if unshare:
        out.append(Isolation(sys.executable, (unshare, *NAMESPACES), None))
    return out + [Isolation(sys.executable, (), None)]


_found: Isolation | None = None
_lock = threading.Lock()


def isolation() -> Isolation:
    """The strongest isolation that works here, found once by running a probe program; one that does not
    contain the program only where the user opted in (COE_CODE_ALLOW_UNISOLATED=1)."""
    global _found
    with _lock:
        if _found is None:
            candidates = _candidates()
            for iso in candidates:
                try:
                    works = _run(iso, PROBE, 30.0, 512).passed
                except SandboxError:
                    works = False
                if works:
                    if iso.unshare != candidates[0].unshare or iso.uid != candidates[0].uid:
                        log.warning("code sandbox weaker than it could be: %s", iso.describe())
                    _found = iso
                    break
            else:
                raise SandboxError("no sandboxed Python child could run here (tried: "
                                   + "; ".join(c.describe() for c in candidates) + ")")
    if not _found.contained and not get_settings().code_allow_unisolated:
        raise SandboxError(f"refusing to run untrusted code without isolation ({_found.describe()}); "
                           "give the service util-linux unshare and user namespaces, or set "
                           "COE_CODE_ALLOW_UNISOLATED=1 to run it anyway")
    return _found


def _limits(timeout_s: float) -> dict[str, int]:
    """Limits of each untrusted process (its address space is set per process: the solution's and the judge's).
    NPROC 1: it can start no process or thread, so the group stays the processes the supervisor forked."""
    return {"CPU": math.ceil(timeout_s) + 1, "NOFILE": 64, "FSIZE": 4 * 2**20, "CORE": 0, "NPROC": 1}


def _result(returncode: int, tail: str, timed_out: bool, timeout_s: float, elapsed: float) -> ExecResult:
    output = tail.strip()[-TAIL_CHARS:]
    if timed_out:
        return ExecResult(False, "timeout", f"killed at the {timeout_s:g}s wall-time limit", elapsed)
    if returncode == PASSED:
        return ExecResult(True, "passed", "", elapsed, output)
    if returncode == TIMEOUT:
        return ExecResult(False, "timeout", "killed at the CPU-time limit", elapsed)
    if returncode in (FAILED, ERROR):
        return ExecResult(False, "failed" if returncode == FAILED else "error", output, elapsed, output)
    return ExecResult(False, "error", (output + f"\n(the sandbox exited with {returncode})").strip(), elapsed, output)


def _imports(tests: str) -> list[str]:
    """The modules the tests import: the supervisor imports them before any untrusted code runs."""
    names = set()
    for node in ast.walk(ast.parse(tests)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return sorted(names)


def _run(iso: Isolation, program: str, timeout_s: float, memory_mb: int, judged: Submission | None = None) -> ExecResult:
    host = Path(tempfile.mkdtemp(prefix="coe-exec-"))
    try:
        source = host / "solution.py"
        source.write_text(program, encoding="utf-8")
        source.chmod(0o600)
        tests = None
        if judged is not None:
            tests = host / "tests.py"
            tests.write_text(judged.tests, encoding="utf-8")
            tests.chmod(0o600)
        private = bool(iso.unshare)
        if iso.uid is not None and not private:
            os.chown(host, iso.uid, iso.gid)
        cfg = {"program": str(source), "tests": str(tests) if tests else None, "private": private,
               "cover": list(COVERED), "work_mb": 16, "work": PRIVATE_WORK if private else str(host), "uid": iso.uid,
               "gid": iso.gid, "limits": _limits(timeout_s), "memory_mb": memory_mb, "judge_mb": JUDGE_MB,
               "block_sockets": not private, "entry_point": judged.entry_point if judged else None,
               "imports": _imports(judged.tests) if judged else []}
        cmd = [*iso.unshare, *(["--"] if iso.unshare else []), iso.python, "-I", "-S", str(CHILD)]
        with tempfile.TemporaryFile() as out:
            started = time.monotonic()
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=host, env={}, start_new_session=True)
            except OSError as exc:
                raise SandboxError(f"could not start {cmd[0]}: {exc}") from None
            try:
                proc.communicate(json.dumps(cfg).encode(), timeout=timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended on its own just now
                    pass
                proc.wait()
                timed_out = True
            elapsed = time.monotonic() - started
            size = out.seek(0, os.SEEK_END)
            out.seek(max(0, size - 4 * TAIL_CHARS))
            tail = out.read().decode("utf-8", "replace")
        return _result(proc.returncode, tail, timed_out, timeout_s, elapsed)
    finally:
        shutil.rmtree(host, ignore_errors=True)


def run_program(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> ExecResult:
    """Run `program` sandboxed; passed when it runs to its end within the limits. Not a judgement: a program
    can fake its own end, so this only ever reads what a program computes (its output)."""
    return _run(isolation(), program, timeout_s, memory_mb)


def judge(submission: Submission, timeout_s: float = 10.0, memory_mb: int = 1024) -> ExecResult:
    """Run the submission's tests against its solution, each in its own sandboxed process; passed only when
    the tests' check(candidate) returns, whatever the solution does."""
    return _run(isolation(), submission.solution, timeout_s, memory_mb, submission)


def judge_many(submissions: list[Submission], workers: int = 2, timeout_s: float = 10.0,
               memory_mb: int = 1024) -> list[ExecResult]:
    """Judge submissions, at most `workers` at a time; results in order."""
    iso = isolation()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda s: _run(iso, s.solution, timeout_s, memory_mb, s), submissions))
