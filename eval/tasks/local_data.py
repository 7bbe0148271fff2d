"""The data loader of the local task YAMLs, for lm-eval's own CLI (`custom_dataset: !function local_data.load`).

lm-eval calls `load(**metadata, **dataset_kwargs)`: the YAML's dataset_kwargs name the file and the
question field; the data directory comes from `--metadata data_dir=DIR`, else the environment
variable LLMSTACK_EVAL_DATA_DIR. The file is read and validated by the same code as
`python -m eval.harness --data-dir` (eval/data.py: either schema, errors naming file and line), so
both tools score the same questions.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DATA_DIR_ENV = "LLMSTACK_EVAL_DATA_DIR"


def load(data_file: str, question_field: str, data_dir: str | None = None, **_metadata: Any):
    """{"test": datasets.Dataset} of the validated, HF-schema records of DIR/data_file."""
    import datasets

    from eval.data import find_data_files, read_questions
    from eval.errors import EvalError

    data_dir = data_dir or os.environ.get(DATA_DIR_ENV)
    if not data_dir:
        raise EvalError(
            f"no data directory for {data_file}: pass `--metadata data_dir=DIR` to lm_eval, or set "
            f"{DATA_DIR_ENV}=DIR (DIR holding {data_file}). Online, use lm-eval's own tasks "
            "(arc_easy, arc_challenge, openbookqa) without --include_path."
        )
    path = find_data_files(Path(data_dir).expanduser().resolve(), {data_file: data_file})[data_file]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(read_questions(path, question_field))})
