"""Task YAMLs for local ARC / OpenBookQA files: `llmstack_arc_easy`, `llmstack_arc_challenge`,
`llmstack_openbookqa` (tag `llmstack`), the local-file twins of lm-eval's own tasks.

`python -m eval.harness --data-dir DIR` builds them itself; lm-eval's own CLI loads them with
`--include_path $(python -m eval.tasks) --metadata data_dir=DIR` (`local_data.py` reads the files).
Being a package, `[options.package_data] * = *.yaml` in setup.cfg ships the YAMLs inside wheels too.
"""
