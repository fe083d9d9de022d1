#!/usr/bin/env bash
# Train the default model's GPU recipe (configs/gpu.yaml) in a short lease and compare it with the
# shipped model; sized to finish in under 10 minutes on one H200 (its first run there: 532 s, docs/training.md):
#
#   scripts/train_gpu.sh OUT_DIR [PHOTOS]
#   TRAIN_GPU_PACK=$OUT bash scripts/train_gpu.sh /tmp/gpu .gpu-photos    # on the lent device machine
#
# PHOTOS holds train/ and val/ folders of clean photos (default ../shared/photos). Needs only
# PyTorch, NumPy, SciPy, Pillow, PyYAML, safetensors and tqdm; the package need not be installed
# (it runs from src/) and nothing is downloaded. Steps, each stopping the script if it fails:
#   1. a smoke run: every stage cut to a few steps, with a checkpoint halfway and validation (and the grid-span
#      choice if the config has one), eager, so a broken setup costs seconds, not the lease;
#   1b. with compile asked for (TRAIN_GPU_SET's compile=..., else the config's): the same smoke run compiled,
#      within TRAIN_GPU_COMPILE_LIMIT seconds (240; less if a minute of training would not be left, and then
#      not tried under 60); it leaves inductor's cache for the training, which then compiles too - or, if it fails,
#      falls back to eager, or runs past the limit, the training runs eagerly (compile.txt says which; this step
#      never stops the script);
#   2. training with a time budget (--max-minutes: every stage scaled to fit): TRAIN_GPU_MINUTES, or else
#      what is left of TRAIN_GPU_DEADLINE seconds (570) after the smoke runs, less TRAIN_GPU_RESERVE seconds
#      (150) for the steps after training - so the whole script ends inside a 600 s command; a compiled
#      training that fails is followed by an eager one on what is left (into run-eager/);
#   3. `eval` of the new and of the shipped model on PHOTOS/val (no classical peers);
#   4. the comparison (scripts/compare_results.py);
#   5. blind mode calibrated for the new model (`instruct-ipt calibrate-blind`, into model/), on the
#      shipped classifier's five calibration photos when PHOTOS/train holds them (else skipped, said):
#      the model folder comes back ready to ship. Last, so a lease that runs out loses only this
#      (220 images, two restorations of a 384 px crop each; on 2 CPU cores 399 s for the shipped
#      model, on a GPU not yet measured; TRAIN_GPU_RESERVE keeps it and the evals room; the classifier runs on the GPU).
# TRAIN_GPU_PACK=DIR (optional): what a device machine may send back - at most 8 files of 16 MiB - packed
# into DIR as each step ends, so that a run cut short still returns what it made (and a step that fails, the
# newest log in reports.tar): model.tar.part-aa, -ab, ...
# (the model folder right after training, in 15 MiB parts; the model alone is about 19 MB), reports.tar
# (log.jsonl, the results, compare.txt, calibrate-blind.txt, gpu-busy.txt, compile.txt and smoke-compiled.txt;
# made again after each step) and
# degradation_classifier.safetensors (after step 5). Unpack: cat DIR/model.tar.part-* | tar -x -C RUN_DIR,
# then tar -x -C RUN_DIR -f DIR/reports.tar, and copy the classifier into RUN_DIR/model/.
# OUT_DIR then holds model/ (the new model, with its degradation_classifier.safetensors after step 5),
# log.jsonl, results-new.csv, results-shipped.csv, compare.txt, calibrate-blind.txt, with compile asked for
# compile.txt and smoke-compiled.log (its end: smoke-compiled.txt), and the full runs (smoke/, smoke-compiled/,
# run/ or run-eager/, eval-new/, eval-shipped/).
# Environment: TRAIN_GPU_CONFIG (configs/gpu.yaml), TRAIN_GPU_SET (none: KEY=VALUE overrides of the config,
# separated by spaces, for the smoke run and the training), TRAIN_GPU_MINUTES (from the deadline), TRAIN_GPU_DEADLINE
# (570), TRAIN_GPU_RESERVE (150), TRAIN_GPU_SMOKE_STEPS (10), TRAIN_GPU_COMPILE_LIMIT (240), TRAIN_GPU_DEVICE (auto),
# TRAIN_GPU_PACK (none),
# PYTHON (python3). Where nvidia-smi answers, OUT_DIR/gpu-busy.txt holds the GPU's busy share every 5 s.
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR [PHOTOS]" >&2
    exit 2
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(mkdir -p "$1" && cd "$1" && pwd)"
PHOTOS="$(cd "${2:-$ROOT/../shared/photos}" && pwd)"
CONFIG="${TRAIN_GPU_CONFIG:-$ROOT/configs/gpu.yaml}"
MINUTES="${TRAIN_GPU_MINUTES:-}"
DEADLINE="${TRAIN_GPU_DEADLINE:-570}"
RESERVE="${TRAIN_GPU_RESERVE:-150}"
PACK="${TRAIN_GPU_PACK:-}"
SMOKE_STEPS="${TRAIN_GPU_SMOKE_STEPS:-10}"
COMPILE_LIMIT="${TRAIN_GPU_COMPILE_LIMIT:-240}"
DEVICE="${TRAIN_GPU_DEVICE:-auto}"
PY="${PYTHON:-python3}"
for d in "$PHOTOS/train" "$PHOTOS/val"; do
    [ -d "$d" ] || { echo "$0: $d: no such folder (PHOTOS must hold train/ and val/)" >&2; exit 2; }
done
for d in smoke smoke-compiled run run-eager; do
    [ ! -e "$OUT/$d" ] || { echo "$0: $OUT/$d exists: give a fresh OUT_DIR" >&2; exit 2; }
done
if [ -n "$PACK" ]; then
    PACK="$(mkdir -p "$PACK" && cd "$PACK" && pwd)"
    [ "$PACK" != "$OUT" ] || { echo "$0: TRAIN_GPU_PACK must be another folder than OUT_DIR" >&2; exit 2; }
fi
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
ipt() { "$PY" -m instruct_ipt "$@"; }
SETS=(--set "data.train=[$PHOTOS/train]" --set "data.val=[$PHOTOS/val]" --set "data.val_cache=$OUT/val-cache")
read -r -a EXTRA <<<"${TRAIN_GPU_SET:-}"  # e.g. "compile=default data.batch_size=96": split on spaces, never globbed
# compile: TRAIN_GPU_SET's, else the config's (null: none); it is tried apart, after an eager smoke run (below)
COMPILE="$("$PY" -c 'import sys, yaml; print((yaml.safe_load(open(sys.argv[1])) or {}).get("compile") or "null")' "$CONFIG")"
for kv in ${EXTRA[@]+"${EXTRA[@]}"}; do
    if [[ "$kv" == compile=* ]]; then
        COMPILE="${kv#compile=}"
    else
        SETS+=(--set "$kv")
    fi
done
# (as YAML reads it: null, ~, false, an empty value - none; a mode's name as written)
COMPILE="$("$PY" -c 'import sys, yaml; v = yaml.safe_load(sys.argv[1]); print(v if isinstance(v, str) and v.lower() != "none" else "")' "$COMPILE")"
if "$PY" -c 'import sys, yaml; sys.exit(0 if (yaml.safe_load(open(sys.argv[1])) or {}).get("grid_spans") else 1)' "$CONFIG"; then
    SETS+=(--set "grid_spans.photos=[$PHOTOS/train]")   # choose the grid span on the training photos
fi
start=$SECONDS
stamp() { echo "== $1 ($((SECONDS - start)) s)"; }
# pack (TRAIN_GPU_PACK): each file written under a temporary name, then renamed, so a kill leaves no half file
pack_reports() {
    [ -n "$PACK" ] || return 0
    local names=() f
    for f in log.jsonl results-new.csv results-shipped.csv compare.txt calibrate-blind.txt gpu-busy.txt compile.txt \
            smoke-compiled.txt; do
        [ -f "$OUT/$f" ] && names+=("$f")
    done
    [ ${#names[@]} -gt 0 ] || return 0
    tar -C "$OUT" -cf "$PACK/.reports.tar.tmp" "${names[@]}" && mv "$PACK/.reports.tar.tmp" "$PACK/reports.tar"
}
pack_model() {
    [ -n "$PACK" ] || return 0
    rm -rf "$PACK/.parts" && mkdir "$PACK/.parts"
    tar -C "$OUT" -cf - model | split -b 15m - "$PACK/.parts/model.tar.part-"
    rm -f "$PACK"/model.tar.part-* && mv "$PACK"/.parts/model.tar.part-* "$PACK/" && rmdir "$PACK/.parts"
}

# a step that fails (set -e) ends the script: the pack still gets the newest log - the smoke run's or the
# training's, with its budget measurements and losses - so that a lease that went wrong says why
DMON=
stop_dmon() {  # before the last pack, so that gpu-busy.txt is whole and no longer growing while tar reads it
    [ -z "$DMON" ] || { kill "$DMON" && wait "$DMON"; } 2>/dev/null || true
    DMON=
}
on_exit() {
    local rc=$?
    stop_dmon
    if [ "$rc" -ne 0 ] && [ -n "$PACK" ]; then
        if [ ! -f "$OUT/log.jsonl" ]; then
            for f in "$OUT/run-eager/log.jsonl" "$OUT/run/log.jsonl" "$OUT/smoke/log.jsonl"; do
                [ -f "$f" ] && { cp -f "$f" "$OUT/log.jsonl"; break; }
            done
        fi
        pack_reports || true  # (also after training: what the later steps and gpu-busy.txt added since)
    fi
    return "$rc"
}
trap on_exit EXIT
trap 'exit 143' TERM INT HUP  # (bash runs no EXIT trap for a signal it dies of: a command's time limit, say)

# the GPU's busy share every 5 s for the whole script (nvidia-smi dmon's sm column), beside the log's samples/s:
# together they say whether a step waits on the host or on the GPU
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi dmon -s u -d 5 >"$OUT/gpu-busy.txt" 2>&1 &
    DMON=$!
fi

stamp "smoke run: every stage $SMOKE_STEPS steps"
# (a checkpoint halfway through each stage: the real run's first one is minutes in); eager: a broken setup
# shows in seconds, whatever compiling would cost
SMOKE=(--steps "$SMOKE_STEPS" --set "ckpt_every=$(( SMOKE_STEPS > 1 ? SMOKE_STEPS / 2 : 1 ))" --device "$DEVICE" --no-progress)
ipt train "$CONFIG" "${SETS[@]}" --set compile=null "${SMOKE[@]}" --out "$OUT/smoke"

# compile (if asked for): the same smoke run compiled, within TRAIN_GPU_COMPILE_LIMIT seconds - and never so long
# that less than a minute of training would be left. It compiles both kinds of stage cold and leaves inductor's
# on-disk cache, from which the training compiles again (its budget's probes). If it fails, falls back to eager, or
# runs past the limit, the training runs eagerly on what the deadline leaves; and if the compiled training itself
# fails before it saves a model, an eager one follows on what is left (compile.txt says what happened)
left_minutes() {  # what the deadline leaves to train after the seconds gone and the reserve
    "$PY" -c 'import sys; print(round((float(sys.argv[1]) - float(sys.argv[2]) - float(sys.argv[3])) / 60, 2))' \
        "$DEADLINE" "$((SECONDS - start))" "$RESERVE"
}
COMPILED=
if [ -n "$COMPILE" ]; then
    limit="$COMPILE_LIMIT" least=1
    if [ -z "$MINUTES" ]; then  # keep a minute of training and the kill's 10 s; not worth trying in under a minute
        room=$((DEADLINE - (SECONDS - start) - RESERVE - 60 - 10))
        [ "$room" -ge "$limit" ] || limit=$room
        least=60
    fi
    if [ "$limit" -lt "$least" ]; then
        echo "compile=$COMPILE: not tried ($limit s of room for it); training without compilation" | tee "$OUT/compile.txt"
    else
        stamp "smoke run compiled (compile=$COMPILE), at most $limit s"
        t0=$SECONDS
        set +e
        timeout --kill-after=10 "$limit" "$PY" -m instruct_ipt train "$CONFIG" "${SETS[@]}" --set "compile=$COMPILE" \
            "${SMOKE[@]}" --out "$OUT/smoke-compiled" >"$OUT/smoke-compiled.log" 2>&1
        rc=$?
        set -e
        took=$((SECONDS - t0))
        tail -c 1000000 "$OUT/smoke-compiled.log" >"$OUT/smoke-compiled.txt"  # (what the pack carries: its end)
        tail -n 5 "$OUT/smoke-compiled.txt"
        if [ "$rc" -eq 0 ] && ! grep -q "torch.compile(mode=.*) failed" "$OUT/smoke-compiled.log"; then
            echo "compile=$COMPILE: the compiled smoke run took $took s; training compiled" | tee "$OUT/compile.txt"
            COMPILED=yes
        else
            why="rc $rc"
            if [ "$rc" -eq 0 ]; then
                why="its compilation failed and it fell back to eager"
            elif { [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; } && [ "$took" -ge "$limit" ]; then
                why="ran past $limit s"
            fi
            echo "compile=$COMPILE: the compiled smoke run did not pass ($why, after $took s); training without compilation" \
                | tee "$OUT/compile.txt"
        fi
        if grep -q "recompile_limit" "$OUT/smoke-compiled.log"; then  # (dynamo ran some of it eagerly, silently)
            echo "(it hit dynamo's recompile limit: part of the model ran eagerly)" | tee -a "$OUT/compile.txt"
        fi
    fi
    pack_reports
fi

minutes_left_or_stop() {  # MINUTES: what the deadline leaves to train; under a minute ends the script (3)
    MINUTES="$(left_minutes)"
    "$PY" -c 'import sys; sys.exit(float(sys.argv[1]) < 1)' "$MINUTES" || {
        echo "$0: $((SECONDS - start)) s gone and $RESERVE s kept for after training leave $MINUTES min of the $DEADLINE s deadline: too little to train${1:-}" >&2
        exit 3; }
}
if [ -z "$MINUTES" ]; then  # what the deadline leaves after the smoke runs and the steps after training
    minutes_left_or_stop
fi
RUN="$OUT/run"
if [ -n "$COMPILED" ]; then
    stamp "training compiled, --max-minutes $MINUTES"
    set +e
    ipt train "$CONFIG" "${SETS[@]}" --set "compile=$COMPILE" --max-minutes "$MINUTES" --out "$RUN" --device "$DEVICE" \
        --no-progress
    rc=$?
    set -e
    if [ "$rc" -ne 0 ]; then
        echo "compile=$COMPILE: the compiled training failed (rc $rc); training eagerly" | tee -a "$OUT/compile.txt"
        if [ -z "${TRAIN_GPU_MINUTES:-}" ]; then  # (minutes given stay as given)
            minutes_left_or_stop " again eagerly"
        fi
        RUN="$OUT/run-eager"
        COMPILED=
    fi
fi
if [ -z "$COMPILED" ]; then
    stamp "training, --max-minutes $MINUTES"
    ipt train "$CONFIG" "${SETS[@]}" --set compile=null --max-minutes "$MINUTES" --out "$RUN" --device "$DEVICE" --no-progress
fi
cp -r "$RUN/model" "$OUT/model"
cp "$RUN/log.jsonl" "$OUT/log.jsonl"
pack_model
pack_reports

stamp "eval: the new model"
ipt eval --model "$OUT/model" --photos "$PHOTOS/val" --sigma 25 --out "$OUT/eval-new" --device "$DEVICE"
stamp "eval: the shipped model"
ipt eval --model "$ROOT/src/instruct_ipt/weights/default" --photos "$PHOTOS/val" --sigma 25 --out "$OUT/eval-shipped" --device "$DEVICE"
cp "$OUT/eval-new/results.csv" "$OUT/results-new.csv"
cp "$OUT/eval-shipped/results.csv" "$OUT/results-shipped.csv"

stamp "comparison"
"$PY" "$ROOT/scripts/compare_results.py" "$OUT/results-new.csv" "$OUT/results-shipped.csv" | tee "$OUT/compare.txt" || true
pack_reports

# the photos the shipped classifier was calibrated on (left out of its training: docs/instructions.md)
CALIBRATION=(bridge garden life storm wine)
cal=()
for name in "${CALIBRATION[@]}"; do
    [ -f "$PHOTOS/train/$name.png" ] && cal+=(--photos "$PHOTOS/train/$name.png")
done
if [ ${#cal[@]} -eq $((2 * ${#CALIBRATION[@]})) ]; then
    stamp "blind mode calibrated for the new model"
    ipt calibrate-blind --model "$OUT/model" "${cal[@]}" --device "$DEVICE" 2>&1 | tee "$OUT/calibrate-blind.txt"
    if [ -n "$PACK" ]; then
        cp "$OUT/model/degradation_classifier.safetensors" "$PACK/.classifier.tmp"
        mv "$PACK/.classifier.tmp" "$PACK/degradation_classifier.safetensors"
    fi
else
    stamp "blind mode not calibrated: $PHOTOS/train lacks some of ${CALIBRATION[*]} (.png)" | tee "$OUT/calibrate-blind.txt"
fi
stop_dmon
pack_reports
stamp "done"
