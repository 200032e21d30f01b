#!/usr/bin/env bash
# The step cache (`--cache-steps`, First-Block Cache) on the built-in world model: for the cache
# off and each threshold, the steps skipped, the time per clip and the evaluator's scores on the
# held-out prompts (`zoetrope eval model`, the README's setting: 66 prompts, seeds from each seed
# set, the model's defaults: 64x64, 17 frames, 20 UniPC steps, guidance 3). Prints a Markdown
# table.
#
#   tools/bench/step_cache_world.sh [ZOETROPE_BIN]      (default: target/release/zoetrope)
#
# Environment (defaults in brackets):
#   THRESHOLDS ["0.1 0.15 0.2 0.3 0.4"]   besides the cache off
#   SEED_SETS ["0"]       first seeds of the scored passes (one full pass per threshold and set;
#                         the README's sets are 0, 100 and 200)
#   ROUNDS [3]            timing rounds; each runs every setting once on the first LIMIT prompts,
#                         the order reversed every other round so machine noise hits them alike
#   LIMIT [22]            prompts per timing run (seeds 0..LIMIT-1)
#   WORK [target/step-cache-world]   where the JSON reports go
#   SKIP_SCORING [unset]  set to 1 to time again and reuse WORK's score files (scores depend only
#                         on the weights and seeds, so a re-timing on a quieter machine keeps them)
#
# Scores and skipped steps do not depend on the machine's load (the clips depend only on the
# weights and seeds); times do, so they come from the alternating rounds: the median over rounds
# of each run's median time per clip (text encoding, denoising and decoding; the cache only
# shortens the denoising).
set -euo pipefail
cd "$(dirname "$0")/../.."
Z=$(realpath "${1:-target/release/zoetrope}")
THRESHOLDS=${THRESHOLDS:-"0.1 0.15 0.2 0.3 0.4"}
SEED_SETS=${SEED_SETS:-0}
ROUNDS=${ROUNDS:-3}
LIMIT=${LIMIT:-22}
WORK=${WORK:-target/step-cache-world}
mkdir -p "$WORK"
WORK=$(realpath "$WORK")
load() { cut -d' ' -f1-3 /proc/loadavg; }
cache_args() { if [ "$1" = off ]; then :; else echo "--cache-steps $1"; fi; }
VARIANTS="off $THRESHOLDS"

LOADS="$(load)"
for round in $(seq 1 "$ROUNDS"); do
    order=$VARIANTS
    if [ $((round % 2)) -eq 0 ]; then order=$(echo "$VARIANTS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
    for v in $order; do
        # shellcheck disable=SC2046
        "$Z" eval model --limit "$LIMIT" $(cache_args "$v") --json >"$WORK/time-$v-$round.json" \
            2>/dev/null
        echo "round $round: $v: median $(jq .median_seconds "$WORK/time-$v-$round.json") s per clip" >&2
    done
    LOADS="$LOADS; $(load)"
done
for seed in $SEED_SETS; do
    [ "${SKIP_SCORING:-}" = 1 ] && break
    for v in $VARIANTS; do
        # shellcheck disable=SC2046
        "$Z" eval model --seed "$seed" $(cache_args "$v") --json >"$WORK/score-$v-seed$seed.json" \
            2>/dev/null
        echo "seed set $seed: $v: total $(jq .summary.mean_total "$WORK/score-$v-seed$seed.json")" >&2
    done
done

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
python3 - "$WORK" "$VARIANTS" "$SEED_SETS" "$ROUNDS" "$LIMIT" "$CPU" "$(nproc)" "$LOADS" <<'EOF'
import json, statistics, sys
work, variants, seed_sets, rounds, limit, cpu, cores, loads = sys.argv[1:9]
variants, seed_sets, rounds = variants.split(), seed_sets.split(), int(rounds)
checks = ["background", "colour", "shape", "size", "permanence", "motion", "physics"]
def read(path):
    return json.load(open(path))
def skipped(report):
    if not report:
        return 0, 0
    s = report["cond"]["skipped"] + (report.get("uncond") or {}).get("skipped", 0)
    c = report["cond"]["calls"] + (report.get("uncond") or {}).get("calls", 0)
    return s, c
rows = {}
for v in variants:
    times = [read(f"{work}/time-{v}-{r}.json")["median_seconds"] for r in range(1, rounds + 1)]
    scores = [read(f"{work}/score-{v}-seed{s}.json") for s in seed_sets]
    sk = [skipped(s.get("step_cache")) for s in scores]
    sub = {c: statistics.mean(next(x["mean_score"] for x in s["summary"]["checks"] if x["name"] == c)
                              for s in scores) for c in checks}
    rows[v] = dict(times=times, totals=[s["summary"]["mean_total"] for s in scores],
                   skipped=(sum(a for a, _ in sk), sum(b for _, b in sk)), sub=sub)
base_t = statistics.median(rows["off"]["times"])
print(f"CPU: {cpu}, {cores} cores; {rounds} alternating timing rounds on the first {limit} held-out "
      f"prompts; scores on all 66, seed set(s) {', '.join(seed_sets)}; load average (1, 5, 15 min) "
      f"before and after each round: {loads}")
print()
sets = " / ".join(seed_sets)
print(f"| cache | steps skipped | s per clip, median (min-max) | speedup | total (seeds {sets}) "
      "| " + " | ".join(checks) + " |")
print("|---|---:|---:|---:|---:|" + "---:|" * len(checks))
for v in variants:
    r = rows[v]
    s, c = r["skipped"]
    t = statistics.median(r["times"])
    totals = " / ".join(f"{100 * x:.1f}%" for x in r["totals"])
    if len(r["totals"]) > 1:
        totals += f" (mean {100 * statistics.mean(r['totals']):.1f}%)"
    def d(x, ref):
        return f"{100 * x:.1f}" + ("" if v == "off" else f" ({100 * (x - ref):+.1f})")
    sub = " | ".join(d(r["sub"][c], rows["off"]["sub"][c]) for c in checks)
    name = "off" if v == "off" else f"`--cache-steps {v}`"
    print(f"| {name} | {100 * s / c if c else 0:.0f}% | {t:.2f} s ({min(r['times']):.2f}-"
          f"{max(r['times']):.2f}) | {base_t / t:.2f}x | {totals} | {sub} |")
EOF
