"""Namespace helpers of the multi-node test harness, run as scripts (standard library only).

Two modes, both started by `harness.py`, never imported by the project:

    unshare -n python nsexec.py hold [DIR]
        The *namespace holder*: the first process of the cluster's private network namespace. It brings
        `lo` up, prints `ready`, then sleeps. Everything else of the cluster enters its namespace with
        `nsenter --net=/proc/<holder pid>/ns/net`. It is also a watchdog: if its parent (the test process)
        dies without tearing the cluster down (SIGKILL, a crashed CI runner), it kills every process of its
        network namespace and removes DIR (the cluster's files), so no Ray node outlives the test on a
        machine shared with other engineers.

    unshare -m --propagation private python nsexec.py mounts --hide /tmp --bind DIR --mkdir DIR -- CMD...
        Prepares a worker node's private mount namespace, then execs CMD (the process keeps its PID, so
        the harness can kill the node by PID). In order it:
        1. opens every `--bind` directory (an O_PATH descriptor keeps the host directory reachable once
           it is covered),
        2. mounts an empty tmpfs over every `--hide` path: what the head or the test driver wrote there
           does not exist for this node, so a hidden shared-disk assumption fails with "No such file",
        3. bind-mounts each `--bind` directory back at its own path (`/proc/self/fd/N` makes the kernel
           take the covered host directory, not the new tmpfs): the one NFS-like directory mounted at the
           same path on every node of a real cluster,
        4. creates the `--mkdir` directories (the node's private Ray `--temp-dir`, inside the tmpfs).
        The tmpfs and the binds vanish with the namespace's last process.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time

MS_BIND = 4096
MS_REC = 16384


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    libc = ctypes.CDLL(None, use_errno=True)

    def enc(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None

    if libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source} -> {target}: {os.strerror(err)}")


def mounts(argv: list[str]) -> None:
    if "--" not in argv:
        sys.exit("usage: nsexec.py mounts [--hide P]... [--bind D]... [--mkdir D]... -- CMD...")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="nsexec.py mounts")
    parser.add_argument("--hide", action="append", default=[], help="cover this path with an empty tmpfs")
    parser.add_argument("--bind", action="append", default=[], help="keep this host directory at its path")
    parser.add_argument("--mkdir", action="append", default=[], help="create after hiding (private dirs)")
    parser.add_argument("--tmpfs-size", default="4g", help="size limit of each tmpfs (RAM, used on demand)")
    args = parser.parse_args(argv[:split])
    held = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY)) for path in args.bind]
    for path in args.hide:
        os.makedirs(path, exist_ok=True)
        _mount("tmpfs", path, "tmpfs", 0, f"mode=1777,size={args.tmpfs_size}")
    for path, fd in held:
        os.makedirs(path, exist_ok=True)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        os.close(fd)
    for path in args.mkdir:
        os.makedirs(path, exist_ok=True)
    cmd = argv[split + 1:]
    os.execvp(cmd[0], cmd)


def _kill_netns_peers() -> None:
    """SIGKILL every other process whose network namespace is ours (only the cluster's can be in it)."""
    mine = os.readlink("/proc/self/ns/net")
    for _ in range(20):  # repeat: a dying raylet's children may still be forking
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            try:
                if os.readlink(f"/proc/{entry}/ns/net") == mine:
                    os.kill(int(entry), signal.SIGKILL)
                    found = True
            except OSError:
                continue
        if not found:
            return
        time.sleep(0.2)


def hold(remove: str | None) -> None:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    parent = os.getppid()
    print("ready", flush=True)
    # SIGTERM (the harness's normal teardown) just ends the holder; the harness kills the rest itself.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while os.getppid() == parent:
        time.sleep(1.0)
    _kill_netns_peers()
    if remove:
        shutil.rmtree(remove, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["hold"]:
        hold(sys.argv[2] if len(sys.argv) > 2 else None)
    elif sys.argv[1:2] == ["mounts"]:
        mounts(sys.argv[2:])
    else:
        sys.exit("usage: nsexec.py hold [DIR] | nsexec.py mounts ... -- CMD...")
