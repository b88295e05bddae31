"""What the multi-node harness reads from /proc and `ss`: namespaces, listening sockets, driver output.

Plain functions, no state; `harness.MultiNodeCluster` builds its inspection methods on them. A process's
namespaces are the targets of `/proc/<pid>/ns/{net,mnt}` (equal strings: same namespace), and
`/proc/<pid>/net/tcp{,6}` lists the sockets of *that process's* network namespace, so the test process can
see inside the cluster's namespace without entering it.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def ns_id(pid: int, kind: str) -> str | None:
    """`net:[4026532174]`-style id of process `pid`'s namespace of `kind` (net, mnt), None if gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/{kind}")
    except OSError:
        return None


def pids_in_ns(kind: str, ns: str) -> list[int]:
    """Every process whose namespace of `kind` is `ns` (zombies and vanished processes skipped)."""
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and ns_id(int(e), kind) == ns]


def _decode(hexaddr: str) -> IPAddress:
    raw = bytes.fromhex(hexaddr)  # 32-bit words in host (little-endian) byte order
    ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
    return (ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else ip


def tcp_listeners(pid: int) -> list[tuple[IPAddress, int]]:
    """(address, port) of the listening TCP sockets of `pid`'s network namespace (IPv4-mapped -> IPv4)."""
    out = []
    for name in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A":  # TCP_LISTEN
                addr, port = f[1].split(":")
                out.append((_decode(addr), int(port, 16)))
    return out


def host_listeners() -> set[tuple[str, str]]:
    """(local address, `users:((...pid=N...))`) of the listening TCP sockets of this process's namespace."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=30).stdout
    return {(f[3], f[5] if len(f) > 5 else "") for f in (ln.split() for ln in out.splitlines()) if len(f) > 3}


def namespaces_available() -> bool:
    """Whether this process may create network and mount namespaces (root, unshare, nsenter present)."""
    try:
        ok = subprocess.run(["unshare", "-n", "-m", "--propagation", "private", "true"],
                            capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    return ok and shutil.which("nsenter") is not None and shutil.which("ip") is not None


def last_json(text: str) -> Any:
    """The last line of `text` that parses as a JSON object or list (a driver's result; Ray may log after it)."""
    for line in reversed(text.splitlines()):
        if line.strip().startswith(("{", "[")):
            try:
                return json.loads(line)
            except ValueError:
                continue
    raise ValueError("no JSON line")
