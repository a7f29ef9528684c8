#!/usr/bin/env bash
# The settings of the paper's Table 1 for one model: perplexity JSONs in out/<model>/.
# Usage: scripts/table1.sh MODEL [extra main.py flags...]   e.g. scripts/table1.sh opt-1.3b --device cuda
set -euo pipefail
model=${1:?usage: scripts/table1.sh MODEL [main.py flags]}
shift
out="out/$(basename "$model")"
cd "$(dirname "$0")/.."
run() { python main.py "$model" --eval_ppl --output_path "$out" "$@"; }
run                                  "$@"   # floating point
run --wbits 4 --abits 16             "$@"
run --wbits 4 --abits 8              "$@"
run --wbits 4 --abits 4              "$@"
run --wbits 4 --abits 4 --only_quant_kv "$@"
run --wbits 4 --abits 3 --only_quant_kv "$@"
run --wbits 3 --abits 3 --only_quant_kv "$@"
