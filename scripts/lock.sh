#!/usr/bin/env bash
# Re-lock: resolve the newest versions setup.cfg allows (torch pinned by constraints/cpu.txt) in a
# throw-away venv and write every other installed package, exactly, to constraints/lock.txt.
# `make setup` installs with both files, so a fresh clone gets the set the suite was run with.
#   make lock          # then `make test` (runs against the new lock) and commit constraints/lock.txt
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=$(mktemp -d)/venv
echo "lock: resolving setup.cfg's ranges in $VENV (a few minutes) ..."
"$PYTHON" -m venv "$VENV"
PIP_CONSTRAINT="$PWD/constraints/cpu.txt" "$VENV/bin/python" -m pip install --quiet --upgrade pip
PIP_CONSTRAINT="$PWD/constraints/cpu.txt" "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
tmp=constraints/lock.txt.tmp
{
  echo "# Every dependency of llmstack[dev] at the exact version the test suite last passed with."
  echo "# Written by scripts/lock.sh (make lock) on $(date -u +%Y-%m-%d) with Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())')."
  echo "# torch is not here: constraints/cpu.txt (CPU) or constraints/gpu.txt (your CUDA build) pins it."
  "$VENV/bin/python" -m pip freeze --exclude-editable | grep -viE '^(torch|pip|setuptools|wheel)=='
} > "$tmp"
mv "$tmp" constraints/lock.txt
rm -rf "$(dirname "$VENV")"
echo "lock: wrote constraints/lock.txt ($(grep -vc '^#' constraints/lock.txt) packages); run make test, then commit it"
