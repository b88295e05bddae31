"""`python -m mdm.train --config base.yaml [--config overlay.yaml] [--set k=v] [--dump_config] [--force]`
(= `mdm train`)."""

import sys

from mdm.platform.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
