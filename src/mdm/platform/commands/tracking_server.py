"""`mdm tracking-server`: the MLflow tracking server the way this project expects it, for a cluster's head.

    mdm tracking-server                                   # http://127.0.0.1:5000, store in ./mlflow_server
    mdm tracking-server --store /var/lib/mdm-mlflow --artifacts s3://my-bucket/mdm/mlartifacts
    mdm tracking-server --host 0.0.0.0 --auth             # reachable from other hosts: only with auth

Runs `mlflow server` in the foreground with: a sqlite backend in `--store` (a local directory of the head;
`--backend-store-uri` takes a database URI instead), artifacts proxied through the server
(`--serve-artifacts`) to `--artifacts` (default `<store>/mlartifacts`; an `s3://`/`gs://` storage root
works the same), so Train workers and inference actors on other nodes log metrics and upload models over
HTTP and need no storage credentials of their own. Runs then set `tracking.tracking_uri` (or
`MLFLOW_TRACKING_URI`) to the printed URI.

It binds to 127.0.0.1 unless `--host` says otherwise: reach it through an SSH tunnel (`ray attach ... -p
5000`) or a port-forward. Binding wider without `--auth` (MLflow's basic-auth app) is refused unless
`--insecure` is also given, since anyone who reaches the port could read and overwrite runs and models.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path
from typing import Optional, Sequence

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def server_command(args: argparse.Namespace) -> list[str]:
    """The `mlflow server ...` argv for these arguments (the store directory is created)."""
    store = Path(args.store).expanduser().resolve()
    store.mkdir(parents=True, exist_ok=True)
    backend = args.backend_store_uri or f"sqlite:///{store / 'mlflow.db'}"
    artifacts = args.artifacts or str(store / "mlartifacts")
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or shutil.which("mlflow") or "mlflow"
    cmd = [mlflow, "server", "--backend-store-uri", backend, "--serve-artifacts",
           "--artifacts-destination", artifacts, "--host", args.host, "--port", str(args.port),
           "--workers", str(args.workers)]
    if args.auth:
        cmd += ["--app-name", "basic-auth"]
    if args.allowed_hosts:
        cmd += ["--allowed-hosts", args.allowed_hosts]
    return cmd


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mdm tracking-server", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--store", default="mlflow_server", help="directory of the sqlite store (default ./mlflow_server)")
    p.add_argument("--backend-store-uri", default=None, help="a database URI instead of the sqlite file")
    p.add_argument("--artifacts", default=None, help="artifact root: a directory or s3://, gs:// (default <store>/mlartifacts)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    p.add_argument("--auth", action="store_true", help="MLflow's basic-auth app (users and permissions)")
    p.add_argument("--allowed-hosts", default=None, help="Host headers to accept when reached by name")
    p.add_argument("--insecure", action="store_true", help="allow --host beyond loopback without --auth")
    p.add_argument("--print-command", action="store_true", help="print the mlflow command and exit")
    args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.host not in LOOPBACK and not args.auth and not args.insecure:
        print(f"mdm tracking-server: error: --host {args.host} without --auth would let anyone who reaches port "
              f"{args.port} read and overwrite runs and models; add --auth (MLflow basic-auth), or --insecure on a "
              f"private network you control", file=sys.stderr)
        return 2
    cmd = server_command(args)
    if args.print_command:
        print(" ".join(cmd))
        return 0
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"mdm tracking-server: MLflow on http://{shown}:{args.port} (store {args.backend_store_uri or args.store}, "
          f"artifacts {args.artifacts or Path(args.store) / 'mlartifacts'}); runs use "
          f"--set tracking.tracking_uri=http://<this host>:{args.port}", file=sys.stderr, flush=True)
    os.execv(cmd[0], cmd)  # the server replaces this process: signals and exit status are MLflow's


if __name__ == "__main__":
    sys.exit(main())
