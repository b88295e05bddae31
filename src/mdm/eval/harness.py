"""`python -m mdm.eval.harness --task gsm8k --pred preds.jsonl [--gt gt.jsonl] [--out metrics.json]`.

The seed's command, kept working: it is `mdm score` (the code lives in `mdm.tasks.harness`).
"""

import sys

from mdm.tasks.harness import format_table, main, score_files, score_records  # noqa: F401

if __name__ == "__main__":
    sys.exit(main())
