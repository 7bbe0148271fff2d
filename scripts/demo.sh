#!/usr/bin/env bash
# The README's main job on its embedded defaults (CPU, a few minutes): grows with the stack.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== model: tiny-llama, parameter table and one forward pass"
python -m modeling.describe tiny-llama --forward
