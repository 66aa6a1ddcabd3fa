"""Run untrusted, model-generated Python programs and say whether they passed.

Each program runs in its own process: `python -I program.py` in a fresh temporary directory
that is deleted afterwards, started by a small bootstrap (`_BOOTSTRAP`) that confines it
before `exec`. No `preexec_fn`: that is unsafe in a threaded parent, and `run_many` uses
threads.

What holds everywhere (Linux):
- wall-clock timeout; then the whole process group is killed (SIGKILL);
- rlimits: address space (a 10 GB allocation raises MemoryError), CPU seconds, file size
  (also bounds stdout/stderr, which go to files, not memory), open files, no core dumps;
- environment stripped to PATH, LANG, HOME and TMPDIR (no inherited secrets), stdin empty,
  `-I` (no PYTHON* variables, no user site-packages, script directory not on sys.path).

When the parent runs as root (this project's machines), in addition:
- a fresh network namespace whose only interface, loopback, is down: every connect(), to
  127.0.0.1 or a public address, fails at once;
- a fresh mount namespace: the program's directory is bind-mounted over /tmp, /var/tmp,
  /dev/shm and /run/lock, so the world-writable places are its own directory (a virtualenv
  that lives under /tmp is bound back in at its path); a directory
  that the unprivileged user could not traverse on the way to the interpreter (such as
  /root for a pyenv Python) is covered by an empty tmpfs with only the interpreter's
  installation bound back in (this also hides the rest of that directory);
- the program runs as a fresh, unprivileged uid (random, in a range no account uses), so
  it can write nowhere outside its directory, cannot read other processes' environments
  (/proc/PID/environ), and RLIMIT_NPROC contains fork bombs (root is exempt from it);
  after the program ends, every process left with that uid, even one that left the process
  group with setsid(), is killed.

Limits: the program can read whatever any local user may read (the repository, /etc, the
Python installation). Without root this is best effort: the network is cut only where the
kernel grants unprivileged user namespaces, and there is no uid change (so no process
limit, writable home and /tmp, and a readable parent environment in /proc). This is a
harness for benchmark code, not a boundary for hostile code on a machine that matters:
use a VM or gVisor for that.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

# Sandbox uids are drawn at random from here: far above real accounts (which stay below
# 2^31 in practice, with user-namespace ranges at 100000+), so every run has a uid of its own.
UID_BASE = 3_000_000_000
UID_SPAN = 1_000_000_000
TAIL_CHARS = 4000

_BOOTSTRAP = r"""
import ctypes, json, os, resource, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
NEWNS, NEWNET, NEWUSER = 0x00020000, 0x40000000, 0x10000000
BIND, REC, PRIVATE, NOSUID, NODEV = 4096, 16384, 1 << 18, 2, 4

def fail(what):
    sys.stderr.write(f"sandbox setup failed: {what}: {os.strerror(ctypes.get_errno())}\n")
    os._exit(125)

def mount(src, dst, fstype=None, flags=0, data=None):
    if libc.mount(src and src.encode(), dst.encode(), fstype and fstype.encode(), flags, data and data.encode()):
        fail(f"mount {src} on {dst}")

def expose(target, stage):
    # Cover the first directory on the way to `target` that others cannot traverse with an
    # empty tmpfs, and bind back only the child of it that leads to `target`.
    parts = os.path.realpath(target).split("/")[1:]
    for i in range(len(parts) - 1):
        d = "/" + "/".join(parts[:i])
        if not os.stat(d).st_mode & 0o001:
            child = "/".join([d.rstrip("/"), parts[i]])
            os.makedirs(stage)
            mount(child, stage, flags=BIND | REC)
            mount("tmpfs", d, "tmpfs", NOSUID | NODEV, "mode=755,size=1m")
            os.mkdir(child)
            mount(stage, child, flags=BIND | REC)
            libc.umount2(stage.encode(), 2)
            os.rmdir(stage)
            return True
    return False

workdir, uid = cfg["workdir"], cfg["uid"]
if uid is not None:
    if libc.unshare(NEWNS | NEWNET):
        fail("unshare")
    mount(None, "/", flags=REC | PRIVATE)  # nothing mounted here leaks out, or in
    for n, prefix in enumerate(cfg["interpreter"]):
        while expose(prefix, os.path.join(workdir, f".stage{n}")):
            pass
    covered = [d for d in cfg["shared_dirs"] if os.path.isdir(d) and os.stat(d).st_mode & 0o002]
    for prefix in cfg["interpreter"]:  # a virtualenv under /tmp must stay visible through the cover
        for d in covered:
            if prefix.startswith(d.rstrip("/") + "/"):
                inner = os.path.join(workdir, os.path.relpath(prefix, d))
                os.makedirs(inner, exist_ok=True)
                mount(prefix, inner, flags=BIND | REC)
    for d in sorted(covered, key=lambda d: d == "/tmp"):  # /tmp last: workdir lies under it
        mount(workdir, d, flags=BIND | REC)
    os.chdir("/tmp" if "/tmp" in covered else workdir)
else:
    libc.unshare(NEWUSER | NEWNET)  # best effort: fails where unprivileged user namespaces are off
    os.chdir(workdir)
for name, value in cfg["rlimits"].items():
    limit = getattr(resource, name)
    hard = resource.getrlimit(limit)[1]
    soft = value if hard == resource.RLIM_INFINITY else min(value, hard)
    if name == "RLIMIT_CPU":  # SIGXCPU at the soft limit, SIGKILL a second later
        hard = soft + 1 if hard == resource.RLIM_INFINITY else min(soft + 1, hard)
    resource.setrlimit(limit, (soft, hard))
if uid is not None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
os.execv(sys.executable, [sys.executable, "-I", "program.py"])
"""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int = 2 << 30  # address space, not resident memory
    processes: int = 32  # processes and threads of the sandbox uid (root only)
    file_bytes: int = 64 << 20
    open_files: int = 256


@dataclass
class SandboxResult:
    status: str  # "passed" | "failed" | "timed_out"
    duration: float  # seconds, wall clock
    error: str = ""  # failed: the tail of stderr (the traceback), or the signal that ended it
    stdout: str = ""  # its tail
    returncode: int | None = None


def run_program(source: str, timeout: float = 10.0, limits: Limits = Limits()) -> SandboxResult:
    """Run `source` as a Python program; passed = exit status 0 within `timeout` seconds."""
    root = os.geteuid() == 0
    uid = UID_BASE + secrets.randbelow(UID_SPAN) if root else None
    workdir = tempfile.mkdtemp(prefix="opengpt4-sandbox-")
    try:
        with open(os.path.join(workdir, "program.py"), "w", encoding="utf-8") as f:
            f.write(source)
        if uid is not None:
            os.chown(workdir, uid, uid)
        config = {
            "workdir": workdir,
            "uid": uid,
            "interpreter": sorted({os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix)}),
            "shared_dirs": ["/tmp", "/var/tmp", "/dev/shm", "/run/lock"],
            "rlimits": {
                "RLIMIT_AS": limits.memory_bytes,
                "RLIMIT_CPU": math.ceil(timeout) + 1,
                "RLIMIT_FSIZE": limits.file_bytes,
                "RLIMIT_NOFILE": limits.open_files,
                "RLIMIT_CORE": 0,
                **({"RLIMIT_NPROC": limits.processes} if root else {}),
            },
        }
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/tmp" if root else workdir,
               "TMPDIR": "/tmp" if root else workdir}
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            start = time.monotonic()
            proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(config)],
                                    cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True)
            try:
                timed_out = not _exited(proc.pid, timeout)
            finally:
                _kill_all(proc, uid)
            duration = time.monotonic() - start
            return _result(proc.returncode, timed_out, duration, _tail(out), _tail(err))
    finally:
        shutil.rmtree(workdir, onerror=_force_remove)


def run_many(programs: Sequence[str], timeout: float = 10.0, workers: int | None = None,
             limits: Limits = Limits()) -> list[SandboxResult]:
    """Run programs in parallel (each in its own sandbox); results in order."""
    workers = workers or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda source: run_program(source, timeout, limits), programs))


def _result(code: int, timed_out: bool, duration: float, stdout: str, stderr: str) -> SandboxResult:
    if timed_out:
        return SandboxResult("timed_out", duration, stderr, stdout, code)
    if code == 0:
        return SandboxResult("passed", duration, "", stdout, code)
    if code < 0:
        name = signal.Signals(-code).name
        why = {"SIGXCPU": " (CPU time limit)", "SIGXFSZ": " (file size limit)"}.get(name, "")
        return SandboxResult("failed", duration, f"{stderr}killed by {name}{why}", stdout, code)
    return SandboxResult("failed", duration, stderr or f"exit status {code}", stdout, code)


def _tail(f: IO[bytes]) -> str:
    f.seek(0, os.SEEK_END)
    f.seek(max(0, f.tell() - 4 * TAIL_CHARS))
    return f.read().decode("utf-8", "replace")[-TAIL_CHARS:]


def _exited(pid: int, timeout: float) -> bool:
    """Wait up to `timeout` seconds for the process to end, without reaping it: while its
    zombie stays, its pid (and so its process group id) cannot be reused by another process."""
    fd = os.pidfd_open(pid)
    try:
        return bool(select.select([fd], [], [], timeout)[0])
    finally:
        os.close(fd)


def _kill_all(proc: subprocess.Popen, uid: int | None) -> None:
    """Kill the program's process group, then (root) anything still running as its uid."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the leader is not reaped yet: the group id is still ours
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + 10
    while uid is not None and _running_as(uid) and time.monotonic() < deadline:
        # kill(-1) from the uid itself reaches every process of that uid at once, so a fork
        # bomb outside the group cannot outrun a scan-and-kill loop.
        # (The kill binary, not Python: the interpreter may sit where that uid cannot reach it.)
        subprocess.run(["kill", "-KILL", "-1"], user=uid, group=uid, extra_groups=[], env={"PATH": "/usr/bin:/bin"},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _running_as(uid: int) -> bool:
    """Whether a live (not zombie) process of this uid exists."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rpartition(")")[2].split()[0] != "Z":
                    return True
        except OSError:  # it ended meanwhile
            continue
    return False


def _force_remove(func, path: str, _exc) -> None:
    """rmtree's error hook: a program may have made its files read-only (matters without root)."""
    os.chmod(os.path.dirname(path), 0o700)
    if os.path.isdir(path):
        os.chmod(path, 0o700)
    func(path)


