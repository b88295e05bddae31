"""`python -m mdm ...` is the `mdm` command."""

import sys

from mdm.platform.cli import main

sys.exit(main())
