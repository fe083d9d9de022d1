#!/usr/bin/env bash
# The committed ablation results of docs/reproduction.md, in one command: every table of
# `instruct-ipt ablate` run into one folder (so tables share their arms), then the report and its
# charts copied to docs/reproduction/:
#
#   scripts/reproduce_tables.sh [OUT_DIR] [extra ablate options, e.g. --size small --device cuda]
#
# OUT_DIR defaults to runs/ablation-cpu. Rerun the same command after an interruption: finished
# runs are skipped and an interrupted one resumes from its checkpoint. With the defaults (tiny,
# 4 minutes per arm and seed, 2 seeds) it trains 11 arms x 2 seeds: 1 h 34 min on 2 CPU cores
# (measured 2026-12-01, docs/reproduction.md).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${1:-runs/ablation-cpu}"
shift || true
for table in table2 fig2 table3 table9 table10 table1; do
    echo "=== $table $(date -u +%H:%M:%S)"
    instruct-ipt ablate "$table" --out "$OUT" --quiet "$@"
done
DOCS="$ROOT/docs/reproduction"
mkdir -p "$DOCS"
cp "$OUT/report.md" "$DOCS/report.md"
cp "$OUT"/table*.png "$OUT"/fig2.png "$DOCS/"
cp "$OUT/table2/similarity.png" "$DOCS/table2-similarity.png"
for task in denoise deblur; do
    cp "$OUT/fig2/$task/rank_energy_constant.png" "$DOCS/fig2-$task-constant.png"
    cp "$OUT/fig2/$task/rank_energy_proportional.png" "$DOCS/fig2-$task-proportional.png"
done
echo "=== done $(date -u +%H:%M:%S): $DOCS/report.md"
