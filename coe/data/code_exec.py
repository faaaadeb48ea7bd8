"""Run untrusted Python (model-written solutions) in a sandboxed child process, and say if it passed.

Each program runs in a fresh `python -I -S` child with an empty environment, stdin closed,
its own session (the whole process group is killed at the wall-time limit), and resource
limits (address space, CPU seconds, open files, file size, processes, no core dumps) set by
the child's first code (coe/data/sandbox_child.py) before the program runs. The limits are
set there rather than in a preexec_fn because programs run from a thread pool, where
preexec_fn is unsafe.

Isolation, found once per process by trying the strongest first (`isolation()` says which):
1. as root with util-linux `unshare`: new network, mount, PID, IPC and UTS namespaces. No
   network at all (not even loopback is up); fresh root-owned tmpfs over /tmp, /var/tmp,
   /dev/shm and /run/lock, so the only writable folder is the working folder inside them,
   which vanishes with the namespace; the program runs as `nobody` (setgroups/setgid/setuid
   after the mounts), so it cannot write the repository or home either; when the PID
   namespace's first process dies the kernel kills every process left in it.
2. as root without namespaces: `nobody`, and a Python-level socket guard (best effort).
3. not root: a user namespace (`unshare --user --map-root-user`) for the network and the
   private /tmp, but the program keeps the caller's rights on the repository and home.
4. nothing of the above: the socket guard only; writes are not contained.
Running as `nobody` needs an interpreter that `nobody` can read (a pyenv under /root is not),
so system interpreters are tried too; any Python 3.8+ will do, the programs use the stdlib.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pwd
import secrets
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

log = logging.getLogger("coe.code_exec")

CHILD = Path(__file__).with_name("sandbox_child.py")
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
    """The strongest isolation that works here, found once by running a probe program."""
    global _found
    with _lock:
        if _found is None:
            candidates = _candidates()
            for iso in candidates:
                try:
                    works = _run(PROBE, iso, 30.0, 512).passed
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
        return _found


def _limits(iso: Isolation, timeout_s: float, memory_mb: int) -> dict[str, int]:
    limits = {"AS": memory_mb * 2**20, "CPU": math.ceil(timeout_s) + 1, "NOFILE": 64, "FSIZE": 4 * 2**20, "CORE": 0}
    if iso.uid is not None:
        limits["NPROC"] = 64  # counted per uid: only meaningful for the sandbox's own uid
    return limits


def _result(tail: str, nonce: str, returncode: int, timed_out: bool, timeout_s: float, elapsed: float) -> ExecResult:
    lines = tail.splitlines()
    status = next((line for line in reversed(lines) if line.startswith(nonce + " ")), None)
    output = "\n".join(line for line in lines if not line.startswith(nonce + " ")).strip()[-TAIL_CHARS:]
    if status is not None:
        word, _, reason = status[len(nonce) + 1:].partition(" ")
        if word == "passed":
            return ExecResult(True, "passed", "", elapsed, output)
        return ExecResult(False, "failed" if word == "failed" else "error", output or reason, elapsed, output)
    sig = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if timed_out:
        return ExecResult(False, "timeout", f"killed at the {timeout_s:g}s wall-time limit", elapsed)
    if sig == signal.SIGXCPU:
        return ExecResult(False, "timeout", "killed at the CPU-time limit", elapsed)
    return ExecResult(False, "error", (output + f"\n(exited with {returncode} before finishing)").strip(), elapsed)


def _run(program: str, iso: Isolation, timeout_s: float, memory_mb: int) -> ExecResult:
    host = Path(tempfile.mkdtemp(prefix="coe-exec-"))
    try:
        source = host / "solution.py"
        source.write_text(program, encoding="utf-8")
        source.chmod(0o644)
        private = bool(iso.unshare)
        if iso.uid is not None and not private:
            os.chown(host, iso.uid, iso.gid)
        nonce = secrets.token_hex(16)
        cfg = {"program": str(source), "private": private, "cover": list(COVERED), "work_mb": 16,
               "work": PRIVATE_WORK if private else str(host), "uid": iso.uid, "gid": iso.gid,
               "limits": _limits(iso, timeout_s, memory_mb), "block_sockets": not private, "nonce": nonce}
        cmd = [*iso.unshare, *(["--"] if iso.unshare else []), iso.python, "-I", "-S", str(CHILD), json.dumps(cfg)]
        with tempfile.TemporaryFile() as out:
            started = time.monotonic()
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        cwd=host, env={}, start_new_session=True)
            except OSError as exc:
                raise SandboxError(f"could not start {cmd[0]}: {exc}") from None
            try:
                proc.wait(timeout=timeout_s)
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
            out.seek(max(0, size - 4 * TAIL_CHARS - 200))
            tail = out.read().decode("utf-8", "replace")
        return _result(tail, nonce, proc.returncode, timed_out, timeout_s, elapsed)
    finally:
        shutil.rmtree(host, ignore_errors=True)


def run_program(program: str, timeout_s: float = 10.0, memory_mb: int = 1024) -> ExecResult:
    """Run `program` sandboxed; passed when it runs to its end within the limits."""
    return _run(program, isolation(), timeout_s, memory_mb)


def run_many(programs: list[str], workers: int = 2, timeout_s: float = 10.0, memory_mb: int = 1024) -> list[ExecResult]:
    """Run programs, at most `workers` at a time; results in order."""
    iso = isolation()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda p: _run(p, iso, timeout_s, memory_mb), programs))
