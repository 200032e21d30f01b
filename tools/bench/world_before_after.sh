#!/usr/bin/env bash
# The built-in world model on two `zoetrope` builds ("before" and "after" a change): wall time of
# `zoetrope generate` for the README's first prompt, and a training step of the world DiT and of
# the world VAE with the project's own trainer, each build given the same command, config and
# data. The builds alternate (before, after; then after, before; ...) so machine noise hits both;
# prints a Markdown table of medians (min-max), the after/before ratio, the CPU and the load
# average.
#
#   tools/bench/world_before_after.sh BEFORE_BIN AFTER_BIN
#
# e.g. with the commit before zoetrope's CPU kernels:
#   git worktree add --detach /work/wt-before 4ee4a5b
#   (cd /work/wt-before && CARGO_TARGET_DIR=/work/target-before cargo build --release -p zoetrope-cli)
#   cargo build --release -p zoetrope-cli
#   tools/bench/world_before_after.sh /work/target-before/release/zoetrope target/release/zoetrope
#
# Environment (defaults in brackets):
#   ROUNDS [3]            alternating rounds
#   GEN_RUNS [3]          `generate` calls per build and round (each a fresh process)
#   TRAIN_STEPS [40]      steps of each training run (one run per build and round); the step time
#                         is read from the trainer's log.jsonl (`elapsed_s`, which counts training
#                         steps only) over steps 10..TRAIN_STEPS, so start-up, the first steps'
#                         warm-up, evaluation and checkpoints are left out
#   WORK [target/world-before-after]   scratch folder (training runs, clips); emptied first
#   MODEL [crates/zoetrope-models/weights/world]   the exported model both DiT runs fine-tune from
#                         (and whose VAE makes their latents)
#   SKIP ["" ]            space-separated parts to leave out: generate dit vae
#   EXAMPLE_BEFORE, EXAMPLE_AFTER [unset]   the two builds' `world_generate_bench` examples
#                         (cargo build --release -p zoetrope-models --example world_generate_bench);
#                         when both are set, each round also runs them (--runs GEN_RUNS, after one
#                         warm-up, in one process) and the table gets the in-process pipeline
#                         call at 64x64 split into denoising and decoding, without process start-up
#
# The training runs:
#   DiT: the shipped fine-tune's command (tools/train/train_world.sh, stage 12: 6-block config,
#        --foreground-weight 3, --lr 2e-4, seed 11, batch 16) from MODEL, on one cache chunk of 128
#        clips (`--max-chunks 1`, 64x64x17) and with no clip scoring at the end (`--eval-prompts 0`).
#        The chunk is encoded once, by BEFORE_BIN, and copied into every run, so both builds train
#        on the same latents bit for bit.
#   VAE: stage 1's command (tools/train/world_vae.json, batch 8 of 32x32 crops, --lr 2e-3, seed 1)
#        from random weights; clips are rendered on the fly from the seed (same on both builds).
set -euo pipefail

if [ $# -ne 2 ]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
    exit 2
fi
BEFORE=$(realpath "$1")
AFTER=$(realpath "$2")
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
GEN_RUNS=${GEN_RUNS:-3}
TRAIN_STEPS=${TRAIN_STEPS:-40}
WORK=${WORK:-target/world-before-after}
MODEL=$(realpath "${MODEL:-crates/zoetrope-models/weights/world}")
SKIP=${SKIP:-}
PROMPT="a red ball bounces to the right on a black background"
WINDOW_FROM=10
if [ "$TRAIN_STEPS" -le "$WINDOW_FROM" ]; then
    echo "TRAIN_STEPS must be above $WINDOW_FROM" >&2
    exit 2
fi

rm -rf "$WORK"
mkdir -p "$WORK"
WORK=$(realpath "$WORK")
LOG="$WORK/samples.txt"
: >"$LOG"
skip() { [[ " $SKIP " == *" $1 "* ]]; }
now() { date +%s.%N; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

dit_run() { # BIN OUT [EXTRA ARGS]
    "$1" train dit --vae "$MODEL" --init-from "$MODEL" --out "$2" \
        --config tools/train/world_dit_6.json --foreground-weight 3 --lr 2e-4 --seed 11 \
        --max-chunks 1 --steps "$TRAIN_STEPS" --eval-prompts 0 "${@:3}"
}
vae_run() { # BIN OUT
    "$1" train vae --out "$2" --config tools/train/world_vae.json --steps "$TRAIN_STEPS" \
        --lr 2e-3 --seed 1
}
# Seconds per training step over steps WINDOW_FROM..TRAIN_STEPS of a run's log.jsonl.
step_seconds() {
    python3 - "$1/log.jsonl" "$WINDOW_FROM" "$TRAIN_STEPS" <<'EOF'
import json, sys
at = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    if "elapsed_s" in r:
        at[r["step"]] = r["elapsed_s"]
a, b = int(sys.argv[2]), int(sys.argv[3])
print(f"{(at[b] - at[a]) / (b - a):.4f}")
EOF
}

if ! skip dit; then
    echo "encoding the DiT runs' latent cache once (BEFORE_BIN, 128 clips)" >&2
    dit_run "$BEFORE" "$WORK/cache-source" --stop-at 1 >"$WORK/cache-source.log" 2>&1 || {
        cat "$WORK/cache-source.log" >&2
        exit 1
    }
fi

echo "load before: $(load)" >&2
LOADS="$(load)"
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then order="before after"; else order="after before"; fi
    for side in $order; do
        if [ "$side" = before ]; then BIN=$BEFORE; else BIN=$AFTER; fi
        if ! skip generate; then
            for i in $(seq 1 "$GEN_RUNS"); do
                t0=$(now)
                "$BIN" generate "$PROMPT" -o "$WORK/$side.mp4" >/dev/null 2>"$WORK/generate.err" || {
                    cat "$WORK/generate.err" >&2
                    exit 1
                }
                t1=$(now)
                s=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
                echo "SAMPLE generate $side $s" >>"$LOG"
                echo "round $round: $side generate $s s" >&2
            done
        fi
        if [ -n "${EXAMPLE_BEFORE:-}" ] && [ -n "${EXAMPLE_AFTER:-}" ]; then
            if [ "$side" = before ]; then EX=$EXAMPLE_BEFORE; else EX=$EXAMPLE_AFTER; fi
            "$EX" --runs "$GEN_RUNS" >"$WORK/example-$side-$round.txt" 2>/dev/null
            # | 64x64 | frames | median s | min | max | text s | denoise s | decode s | ...
            row=$(grep -m1 '^| 64x64 |' "$WORK/example-$side-$round.txt")
            echo "$row" | awk -F'|' -v side="$side" '{
                gsub(/ /, ""); print "SAMPLE pipeline " side " " $4;
                print "SAMPLE denoise " side " " $8; print "SAMPLE decode " side " " $9 }' >>"$LOG"
            echo "round $round: $side example: $row" >&2
        fi
        if ! skip dit; then
            out="$WORK/dit-$side-$round"
            mkdir -p "$out"
            cp -r "$WORK/cache-source/cache" "$out/cache"
            dit_run "$BIN" "$out" >"$out.log" 2>&1 || {
                cat "$out.log" >&2
                exit 1
            }
            s=$(step_seconds "$out")
            echo "SAMPLE dit-step $side $s" >>"$LOG"
            echo "round $round: $side DiT step $s s" >&2
            rm -rf "$out/cache"
        fi
        if ! skip vae; then
            out="$WORK/vae-$side-$round"
            vae_run "$BIN" "$out" >"$out.log" 2>&1 || {
                cat "$out.log" >&2
                exit 1
            }
            s=$(step_seconds "$out")
            echo "SAMPLE vae-step $side $s" >>"$LOG"
            echo "round $round: $side VAE step $s s" >&2
        fi
    done
    LOADS="$LOADS; $(load)"
    echo "load after round $round: $(load)" >&2
done

# Both builds must have trained the same way: the final step's loss of every run.
SAME_LOSS=""
for kind in dit vae; do
    skip "$kind" && continue
    losses=$(for f in "$WORK"/$kind-*/log.jsonl; do jq -r 'select(.loss) | .loss' "$f" | tail -1; done | sort -u)
    if [ "$(echo "$losses" | wc -l)" -eq 1 ]; then
        SAME_LOSS="$SAME_LOSS $kind: every run's loss at step $TRAIN_STEPS is $losses (identical on both builds);"
    else
        SAME_LOSS="$SAME_LOSS $kind: the runs' final losses differ: $(echo $losses);"
    fi
done

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
python3 - "$LOG" "$CPU" "$(nproc)" "$LOADS" "$ROUNDS" "$GEN_RUNS" "$TRAIN_STEPS" "$WINDOW_FROM" \
    "$SAME_LOSS" <<'EOF'
import statistics, sys
log, cpu, cores, loads, rounds, gen_runs, steps, window, same_loss = sys.argv[1:10]
samples = {}
for line in open(log):
    _, what, side, s = line.split()
    samples.setdefault(what, {}).setdefault(side, []).append(float(s))
names = {
    "generate": f"`zoetrope generate` (64x64, 17 frames, 20 steps; whole process), s",
    "dit-step": f"DiT training step (6 blocks, batch 16, 64x64x17 latents; steps {window}-{steps}), s",
    "pipeline": "`WorldPipeline::generate` in process (`world_generate_bench`, 64x64; median of each round's runs), s",
    "denoise": "of which denoising (20 steps, CFG batch 2), s",
    "decode": "of which VAE decoding, s",
    "vae-step": f"VAE training step (batch 8, 32x32 crops; steps {window}-{steps}), s",
}
print(f"CPU: {cpu}, {cores} cores; {rounds} alternating rounds ({gen_runs} `generate` calls per "
      f"build and round, one training run of {steps} steps per build and round); load average "
      f"(1, 5, 15 min) before and after each round: {loads}")
print()
print("| what | before: median (min-max, n) | after: median (min-max, n) | after / before |")
print("|---|---:|---:|---:|")
def cell(v):
    return f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f}, n={len(v)})"
for what in ["generate", "pipeline", "denoise", "decode", "dit-step", "vae-step"]:
    if what not in samples:
        continue
    b, a = samples[what]["before"], samples[what]["after"]
    ratio = statistics.median(a) / statistics.median(b)
    print(f"| {names[what]} | {cell(b)} | {cell(a)} | {ratio:.2f}x |")
if same_loss.strip():
    print()
    print(f"Training check:{same_loss}")
EOF
