"""The first code to run in a sandbox (coe/data/code_exec.py starts it); untrusted code runs in a child it forks.

Run as `python -I -S sandbox_child.py` with its config (JSON) on stdin, stdlib only, Python 3.8+. This
process, the supervisor, stays out of the untrusted code's reach: it reads the sources, inside a mount
namespace mounts fresh root-owned tmpfs over the world-writable folders and makes the working folder in
one, makes itself undumpable (no ptrace, no /proc/<pid>/mem or fd of it), then forks. Each forked process
confines itself before running anything: every resource limit lowered (soft = hard; NPROC 1, so it can
start no process or thread), the capability bounding set emptied, the sandbox uid taken (setgroups, setgid,
setuid), every capability dropped, no_new_privs, undumpable, and without a network namespace the socket
constructors replaced by ones that fail.

The supervisor's exit code is the verdict (PASSED, FAILED, ERROR, TIMEOUT); the untrusted code cannot set
it. In `run` mode the program runs in the one child and its verdict is its own (ran to the end, or not):
it could fake that, and gains nothing, since a run's only product is what it prints. In `judge` mode the
solution runs in one child and the tests in another, the judge: the judge's `candidate` sends the
arguments to the solution as plain data and gets plain data back (only None, bool, int, float, str and
lists, tuples, sets, frozensets and dicts of them), so none of the solution's code ever runs in the judge
and nothing it prints counts.
"""

import ctypes
import json
import linecache
import os
import resource
import signal
import sys
import traceback

PASSED, FAILED, ERROR, TIMEOUT = 64, 65, 66, 67
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 4, 24, 38
CAP_VERSION_3 = 0x20080522
MAX_REPLY = 64 * 2**20
TAGS = {"tuple": tuple, "set": set, "frozenset": frozenset}

libc = ctypes.CDLL(None, use_errno=True)


class CandidateError(Exception):
    """The solution raised, ended, or answered with something that is not plain data."""


def _check(ok: int, what: str) -> None:
    if ok != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _private_folders(cfg: dict) -> str:
    """Fresh root-owned tmpfs over every world-writable folder; the working folder inside the first."""
    for folder in cfg["cover"]:
        if os.path.isdir(folder) and not os.path.islink(folder):
            options = f"size={cfg['work_mb']}m,mode=0755".encode()
            _check(libc.mount(b"tmpfs", folder.encode(), b"tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options),
                   f"mount tmpfs on {folder}")
    os.mkdir(cfg["work"], 0o700)
    if cfg["uid"] is not None:
        os.chown(cfg["work"], cfg["uid"], cfg["gid"])
    return cfg["work"]


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_privileges(cfg: dict) -> None:
    """No capability (in the bounding set either), the sandbox uid, no way to gain privileges by exec."""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    for cap in range(last + 1):
        libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # fails without CAP_SETPCAP: then there is nothing to drop
    if cfg["uid"] is not None:
        os.setgroups([])
        os.setgid(cfg["gid"])
        os.setuid(cfg["uid"])
    _check(libc.capset(ctypes.byref(_CapHeader(CAP_VERSION_3, 0)), (_CapData * 2)()), "capset")
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")


def _block_sockets() -> None:
    import _socket
    import socket

    def refuse(*args, **kwargs):
        raise OSError("network access is disabled in this sandbox")

    class NoSocket(socket.socket):
        def __init__(self, *args, **kwargs):
            refuse()

    socket.socket = socket.SocketType = NoSocket
    _socket.socket = _socket.SocketType = NoSocket
    socket.socketpair = socket.fromfd = socket.create_connection = socket.create_server = refuse


def _confine(cfg: dict, memory_mb: int) -> None:
    limits = {**cfg["limits"], "AS": memory_mb * 2**20}
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))
    _drop_privileges(cfg)
    if cfg["block_sockets"]:
        _block_sockets()


def encode(value):
    """Plain data as JSON-ready values; anything else (a user class, a function) raises TypeError."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [encode(v) for v in value]
    if kind in (tuple, set, frozenset):
        return {kind.__name__: [encode(v) for v in value]}
    if kind is dict:
        return {"dict": [[encode(k), encode(v)] for k, v in value.items()]}
    raise TypeError(f"not plain data: {kind.__name__}")


def decode(data):
    """The inverse of encode, on anything json.loads gave: only builtin values come out."""
    if isinstance(data, list):
        return [decode(v) for v in data]
    if isinstance(data, dict) and len(data) == 1:
        (tag, items), = data.items()
        if tag in TAGS and isinstance(items, list):
            return TAGS[tag](decode(v) for v in items)
        if tag == "dict" and isinstance(items, list) and all(isinstance(p, list) and len(p) == 2 for p in items):
            return {decode(k): decode(v) for k, v in items}
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    raise CandidateError("the solution answered with something that is not plain data")


def _exec(source: str, filename: str, namespace: dict) -> None:
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)


def _verdict(exc: BaseException) -> int:
    """Print the traceback from the untrusted frames on; the exit code for it."""
    try:
        traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
    except BaseException:
        pass
    return FAILED if isinstance(exc, AssertionError) else ERROR


def _exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BaseException:
            pass
    os._exit(code)


def _run(cfg: dict, source: str) -> None:
    """`run` mode: the program as __main__; its end is its verdict."""
    _confine(cfg, cfg["memory_mb"])
    try:
        _exec(source, "solution.py", {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as exc:  # the program's failure, whatever it is (SystemExit included)
        _exit(_verdict(exc))
    _exit(PASSED)


def _serve(cfg: dict, source: str, calls: int, replies: int) -> None:
    """The solution's side of `judge` mode: define it, then answer each call with plain data."""
    _confine(cfg, cfg["memory_mb"])
    inbox, outbox = os.fdopen(calls, "r"), os.fdopen(replies, "w")
    try:
        namespace = {"__name__": "__main__", "__builtins__": __builtins__}
        _exec(source, "solution.py", namespace)
        function = namespace[cfg["entry_point"]]
    except BaseException as exc:
        _exit(_verdict(exc))
    for line in inbox:
        try:
            reply = {"value": encode(function(*decode(json.loads(line))))}
        except BaseException as exc:
            reply = {"raised": f"{type(exc).__name__}: {exc}"[:300]}
        outbox.write(json.dumps(reply) + "\n")
        outbox.flush()
    _exit(PASSED)


def _judge(cfg: dict, tests: str, calls: int, replies: int) -> None:
    """The judge's side: the tests' check(candidate) with a candidate that only passes plain data."""
    _confine(cfg, cfg["judge_mb"])
    outbox, inbox = os.fdopen(calls, "w"), os.fdopen(replies, "r")

    def candidate(*args):
        outbox.write(json.dumps(encode(list(args))) + "\n")
        outbox.flush()
        line = inbox.readline(MAX_REPLY)
        if not line.endswith("\n"):
            raise CandidateError("the solution ended without answering")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise CandidateError("the solution's reply is not a reply")
        if "raised" in reply:
            raise CandidateError(f"the solution raised {str(reply['raised'])[:300]}")
        return decode(reply.get("value"))

    try:
        namespace = {"__name__": "__judge__", "__builtins__": __builtins__}
        _exec(tests, "tests.py", namespace)
        namespace["check"](candidate)
    except BaseException as exc:
        _exit(_verdict(exc))
    _exit(PASSED)


def _fork(child, *args) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            child(*args)
        finally:
            os._exit(ERROR)
    return pid


def _outcome(status: int) -> int:
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
        return TIMEOUT
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else ERROR
    return code if code in (PASSED, FAILED, ERROR) else ERROR


def main() -> None:
    cfg = json.loads(sys.stdin.read())
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    _check(libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "dumpable")
    with open(cfg["program"], encoding="utf-8") as f:
        source = f.read()
    tests = None
    if cfg["tests"] is not None:
        with open(cfg["tests"], encoding="utf-8") as f:
            tests = f.read()
        for module in cfg["imports"]:  # now, while nothing untrusted runs: the judge finds them imported
            __import__(module)
    os.chdir(_private_folders(cfg) if cfg["private"] else cfg["work"])
    if tests is None:
        _, status = os.waitpid(_fork(_run, cfg, source), 0)
        _exit(_outcome(status))
    calls_r, calls_w = os.pipe()
    replies_r, replies_w = os.pipe()
    solution = _fork(lambda: (os.close(calls_w), os.close(replies_r), _serve(cfg, source, calls_r, replies_w)))
    os.close(calls_r)
    os.close(replies_w)
    judge = _fork(_judge, cfg, tests, calls_w, replies_r)
    os.close(calls_w)
    os.close(replies_r)
    _, status = os.waitpid(judge, 0)
    verdict = _outcome(status)
    os.kill(solution, signal.SIGKILL)
    _, solution_status = os.waitpid(solution, 0)
    _exit(TIMEOUT if verdict != PASSED and _outcome(solution_status) == TIMEOUT else verdict)


if __name__ == "__main__":
    main()
