"""The first code to run in a sandboxed child (coe/data/code_exec.py starts it); runs untrusted code last.

Run as `python -I -S sandbox_child.py <config json>` (stdlib only, Python 3.8+). In order:
read the program; inside a mount namespace, mount fresh root-owned tmpfs over the
world-writable folders (so nothing written there reaches the host) and make the working folder
in one; lower every resource limit (soft = hard, so the program cannot raise them again);
drop to the sandbox uid (setgroups, setgid, setuid: no way back); without a network
namespace, replace the socket constructors with ones that fail. Then run the program as
__main__ and print one status line, `<nonce> passed`, or `<nonce> failed|error <reason>`.
"""

import ctypes
import json
import linecache
import os
import resource
import sys
import traceback

MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8


def _mount_tmpfs(target: str, options: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if libc.mount(b"tmpfs", target.encode(), b"tmpfs", flags, options.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def _private_folders(cfg: dict) -> str:
    """Fresh root-owned tmpfs over every world-writable folder; the working folder inside the first."""
    for folder in cfg["cover"]:
        if os.path.isdir(folder) and not os.path.islink(folder):
            _mount_tmpfs(folder, f"size={cfg['work_mb']}m,mode=0755")
    os.mkdir(cfg["work"], 0o700)
    if cfg["uid"] is not None:
        os.chown(cfg["work"], cfg["uid"], cfg["gid"])
    return cfg["work"]


def _limit(limits: dict) -> None:
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (value, value))


def _drop(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


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


def _status(nonce: str, text: str) -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os.write(1, f"\n{nonce} {text}\n".encode("utf-8", "replace"))
    os._exit(0)


def main() -> None:
    cfg = json.loads(sys.argv[1])
    with open(cfg["program"], encoding="utf-8") as f:
        source = f.read()
    work = _private_folders(cfg) if cfg["private"] else cfg["work"]
    os.chdir(work)
    _limit(cfg["limits"])
    if cfg["uid"] is not None:
        _drop(cfg["uid"], cfg["gid"])
    if cfg["block_sockets"]:
        _block_sockets()
    nonce = cfg["nonce"]
    sys.argv = ["solution.py"]
    linecache.cache["solution.py"] = (len(source), None, source.splitlines(True), "solution.py")
    try:
        code = compile(source, "solution.py", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
    except BaseException as exc:  # the program's failure, whatever it is (SystemExit included)
        try:  # the traceback from the program's own frames on
            traceback.print_exception(type(exc), exc, exc.__traceback__.tb_next)
        except BaseException:
            pass
        kind = "failed" if isinstance(exc, AssertionError) else "error"
        try:
            reason = f"{type(exc).__name__}: {str(exc)[:200]!r}"
        except BaseException:
            reason = type(exc).__name__
        _status(nonce, f"{kind} {reason}")
    _status(nonce, "passed")


if __name__ == "__main__":
    main()
