"""Reference results files for `python -m eval.harness ... --compare` (data, not code).

This file only makes the folder a package, so `[options.package_data] * = *.json` in setup.cfg
ships the JSON files inside wheels too.
"""
