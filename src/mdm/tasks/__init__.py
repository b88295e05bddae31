"""Task registry and task packs (gsm8k, hitab, openscience, arithmetic, arithmetic_mc).

Importing this package registers the builtin packs in `get_registry("tasks")`:

    from mdm.platform.registry import get_registry
    task = get_registry("tasks").get("gsm8k")(data_dir="../shared/data/gsm8k")

`llada_gsm8k`, `llada_hitab` and `llada_openscience` (the seed's names) are aliases of the packs.
See `mdm.tasks.base` for the Task contract, `mdm.tasks.data` for the processed-JSONL schema (registered as `prompt_completion`),
`mdm.tasks.preprocess` (`mdm preprocess`) and `mdm.tasks.harness` (`mdm score`).
"""

from mdm.tasks.base import TASKS, Example, Task, register_task  # noqa: F401
from mdm.tasks import arithmetic, arithmetic_mc, gsm8k, hitab, openscience  # noqa: F401  (registers the packs)
from mdm.tasks import data  # noqa: F401  (registers the processed-JSONL schema `prompt_completion`)

# The seed's harness names for the same packs (`mdm list tasks` shows them).
for _name in ("gsm8k", "hitab", "openscience"):
    TASKS.alias(f"llada_{_name}", _name)

__all__ = ["Example", "Task", "register_task"]
