#!/usr/bin/env bash
# The committed Table 8 results of docs/reproduction.md (the diffusion extension), in one command:
# `instruct-ipt ablate table8` into one folder, then its report and sample sheets copied to
# docs/reproduction/table8/:
#
#   scripts/reproduce_table8.sh [OUT_DIR] [extra ablate options, e.g. --metric-weights DIR]
#
# OUT_DIR defaults to runs/table8-cpu. The committed run: tiny U-Net at 64x64, base model 900 steps,
# each arm 300 steps per seed, 2 seeds (fixed steps: the same schedule on any machine). Rerun the
# same command after an interruption: finished runs are skipped, an interrupted one resumes.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-runs/table8-cpu}"
shift || true
echo "=== table8 $(date -u +%H:%M:%S)"
instruct-ipt ablate table8 --steps 300 --seeds 2 --out "$OUT" --quiet "$@"
DOCS="$ROOT/docs/reproduction/table8"
mkdir -p "$DOCS"
cp "$OUT/report.md" "$OUT"/table8-*.png "$DOCS/"
echo "=== done $(date -u +%H:%M:%S): $DOCS/report.md"
