"""The README's first command as a newcomer runs it: offline, on loopback only, with a terminal one can read.

    pytest tests/experiments/test_main_job.py -q          # ~1.5 minutes on 2 CPUs

One run of `python experiments/gsm8k.py` (tiny preset, a few steps, 2 eval rows) in a subprocess proves:
- it needs no network: the run gets a network namespace of its own holding loopback and one address that
  leads nowhere (192.0.2.77, TEST-NET-1), HF_HUB_OFFLINE unset, so GSM8K must come from the package. Where
  namespaces cannot be made (not root), it runs on this machine's network with every proxy variable pointing
  at a closed port, so any HTTP request fails;
- nothing listens beyond loopback: RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER is not in its environment (mdm must set
  it before Ray is imported), and every listening TCP socket of the job's processes, sampled from /proc while
  it runs, is on 127.0.0.1 or ::1. Without mdm's setting the same job listens on 192.0.2.77 and on wildcards;
- the terminal stays readable and is only ours: stdout and stderr together hold at most 60 lines (Ray's
  detail is in its log files), and every line is mdm's, the summary or one of mdm's bars
  (test_main_job_terminal.foreign), run as a new user: RAY_AUTH_MODE and the MLflow variables unset, HOME a
  fresh directory (where Ray writes its auth token).
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from test_main_job_terminal import DROP, foreign

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 60
NOWHERE = "192.0.2.77"
# A namespace with loopback and one interface whose address leads nowhere (a veth pair, no route out):
# Ray, if allowed, picks that address for its node and binds its servers to it.
NETNS = ("ip link set lo up && ip link add v0 type veth peer name v1 && ip addr add {ip}/24 dev v0 && "
         "ip link set v0 up && ip link set v1 up && ip route add default dev v0 && exec \"$@\"")


def _decode(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)  # 32-bit words in host (little-endian) order
    ip = ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


def listening_sockets(pid: int) -> dict[int, str]:
    """{socket inode: "address:port"} of the listening TCP sockets in `pid`'s network namespace."""
    out: dict[int, str] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A":  # TCP_LISTEN
                addr, port = f[1].split(":")
                out[int(f[9])] = f"{_decode(addr)}:{int(port, 16)}"
    return out


def tree_listeners(root: int) -> set[tuple[str, str]]:
    """(process name, "address:port") of every listening socket held by `root` or its descendants."""
    try:
        procs = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    table = listening_sockets(root)
    found = set()
    for p in procs:
        try:
            for fd in os.listdir(f"/proc/{p.pid}/fd"):
                target = os.readlink(f"/proc/{p.pid}/fd/{fd}")
                if target.startswith("socket:[") and int(target[8:-1]) in table:
                    found.add((p.name(), table[int(target[8:-1])]))
        except (OSError, psutil.Error):
            continue
    return found


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def is_loopback(hostport: str) -> bool:
    return ipaddress.ip_address(hostport.rsplit(":", 1)[0]).is_loopback


def test_socket_table_reader_flags_wildcards_and_interfaces() -> None:
    """The reader this test relies on, against lines in the kernel's format (independent of Ray)."""
    assert _decode("0100007F") == "127.0.0.1" and _decode("00000000") == "0.0.0.0"
    assert _decode("0000000000000000FFFF00000100007F") == "127.0.0.1"  # ::ffff:127.0.0.1
    assert _decode("00000000000000000000000001000000") == "::1"
    assert _decode("4D0200C0") == NOWHERE
    assert not is_loopback("0.0.0.0:8265") and not is_loopback(f"{NOWHERE}:1") and not is_loopback(":::5")
    assert is_loopback("127.0.0.1:6379") and is_loopback("::1:1")


def _namespaces() -> bool:
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "-n", "sh", "-c", NETNS.format(ip=NOWHERE), "sh", "true"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


def _env(home: Path) -> dict[str, str]:
    # A newcomer's Ray Train polls its workers at Ray's default, not the test suite's (tests/conftest.py).
    drop = (*DROP, "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               RAY_USAGE_STATS_ENABLED="0", HOME=str(home))
    return env


@pytest.mark.slow
def test_main_job_offline_loopback_and_readable(tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "experiments" / "gsm8k.py"), "--limit", "64",
           "--set", "train.max_steps=2", "--set", "eval.limit=2", "--set", "sampler.gen_length=16",
           "--set", "sampler.block_length=16", "--set", "sampler.steps=8"]
    env = _env(tmp_path)
    isolated = _namespaces()
    if isolated:
        cmd = ["unshare", "-n", "sh", "-c", NETNS.format(ip=NOWHERE), "sh", *cmd]
    else:  # no namespaces here: every HTTP client (requests, httpx, urllib) goes to a closed port
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        env.update({k: dead for k in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy")})
        env["NO_PROXY"] = env["no_proxy"] = ""
    log = tmp_path / "terminal.txt"
    seen: set[tuple[str, str]] = set()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline, tree = time.time() + 600, {}
        while proc.poll() is None and time.time() < deadline:
            seen |= tree_listeners(proc.pid)
            tree.update({c.pid: c for c in _descendants(proc.pid)})
            time.sleep(0.5)
        if proc.poll() is None:  # stop the whole tree: Ray's processes outlive a killed driver
            for p in [psutil.Process(proc.pid), *tree.values()]:
                try:
                    p.kill()
                except psutil.Error:
                    pass
            proc.wait()
    text = log.read_text()
    assert proc.returncode == 0, text[-4000:]
    lines = text.splitlines()
    assert len(lines) <= MAX_LINES, f"{len(lines)} lines:\n{text}"
    assert "Traceback" not in text, text
    assert foreign(text) == [], "\n".join(foreign(text))
    summary = json.loads(text[text.index("== gsm8k summary ==") + len("== gsm8k summary =="):
                              text.index("MLflow: mlflow ui")])
    assert summary["n_eval"] == 2 and summary["steps"] == 2 and summary["accuracy"] is not None
    # the tiny preset's usual 0% gets one line naming the demo that learns, and only then
    assert ("python experiments/arithmetic.py" in text) == (summary["accuracy"] == 0)
    assert "the copy shipped with mdm" in text and Path(summary["predictions"]).is_file()
    # Ray's own servers were seen (GCS, raylet, the agents), and none beyond loopback.
    assert {name for name, _ in seen} >= {"gcs_server", "raylet"}, seen
    exposed = sorted((name, hp) for name, hp in seen if not is_loopback(hp))
    assert not exposed, f"listening beyond loopback (namespace: {isolated}): {exposed}"
