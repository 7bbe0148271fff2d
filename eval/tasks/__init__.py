"""Task YAMLs for local ARC / OpenBookQA files (data, not code).

This file only makes the folder a package, so `[options.package_data] * = *.yaml` in setup.cfg
ships the YAMLs inside wheels too.
"""
