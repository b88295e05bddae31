"""`mdm tracking sync RUN_DIR`: ship a run's tracking spool to its MLflow server, each record exactly once.

    mdm tracking sync outputs/gsm8k-ab12cd34            # the run directory (holding tracking_spool/)
    mdm tracking sync outputs/gsm8k-ab12cd34 --wait 300 # keep trying that long while the server is down

For a run whose driver died, or whose end found the server down (the run said so in one line naming this
command). The spool knows its server and run (spool.py); what the server already holds is not sent again
(shipper.py). Exit status 0 when nothing is left, 1 when the server could not be reached in time.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mdm tracking", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    s = sub.add_parser("sync", help="ship a run's tracking spool (RUN_DIR or RUN_DIR/tracking_spool)")
    s.add_argument("run_dir")
    s.add_argument("--wait", type=float, default=0.0, help="seconds to keep trying while the server is down")
    args = p.parse_args(argv)

    from mdm.platform.tracking.shipper import Shipper
    from mdm.platform.tracking.spool import Spool

    try:
        spool = Spool.open(args.run_dir)
    except FileNotFoundError as e:
        print(f"mdm tracking sync: {e}", file=sys.stderr)
        return 2
    shipper = Shipper(spool)
    done = shipper.sync(args.wait)
    run_id = spool.cursor().run_id
    if done:
        print(f"mdm tracking sync: {shipper.shipped} record(s) shipped to run {run_id} at {spool.uri}; "
              f"nothing left in {spool.dir}", file=sys.stderr)
        return 0
    print(f"mdm tracking sync: {spool.uri} unreachable; {shipper.shipped} record(s) shipped, "
          f"{spool.backlog()} bytes left in {spool.dir} (run it again, or with --wait SECONDS)", file=sys.stderr)
    return 1
