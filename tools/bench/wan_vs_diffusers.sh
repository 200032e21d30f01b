#!/usr/bin/env bash
# zoetrope vs diffusers: one Wan 2.1 transformer forward, one VAE decode, one self-attention and
# one FFN-shaped linear layer, same weights, same inputs, same thread count, on the CPU, in f32 and
# bf16. Runs the two sides interleaved (zoetrope, diffusers, zoetrope, diffusers, ...) so machine
# noise hits both, then prints a Markdown table of medians, GFLOP/s for the attention and GEMM
# rows, and the machine's measured f32 FMA peak.
#
#   tools/bench/wan_vs_diffusers.sh
#
# Environment (defaults in brackets):
#   VENV [/work/venv-parity]        Python venv with the pinned reference (tools/parity/README.md)
#   BENCH_DIR [target/bench-wan]    weights + inputs written by `bench_wan.py prepare` (made if absent)
#   BENCH_THREADS [2]               threads for both sides (torch.set_num_threads, RAYON_NUM_THREADS)
#   ROUNDS [3]                      interleaved rounds; each round runs one process per side and component
#   RUNS_PER_ROUND [2]              timed calls per process (after WARMUP untimed ones)
#   WARMUP [1]
#   COMPONENTS ["transformer vae attention gemm"]
#   DTYPES ["f32 bf16"]
#   VAE_LATENT [1,16,3,16,24]       latent the VAE decodes (used only when BENCH_DIR is made)
# Timed samples per side and component = ROUNDS x RUNS_PER_ROUND.
set -euo pipefail

cd "$(dirname "$0")/../.."
VENV=${VENV:-/work/venv-parity}
BENCH_DIR=${BENCH_DIR:-target/bench-wan}
BENCH_THREADS=${BENCH_THREADS:-2}
ROUNDS=${ROUNDS:-3}
RUNS_PER_ROUND=${RUNS_PER_ROUND:-2}
WARMUP=${WARMUP:-1}
COMPONENTS=${COMPONENTS:-"transformer vae attention gemm"}
DTYPES=${DTYPES:-"f32 bf16"}
VAE_LATENT=${VAE_LATENT:-1,16,3,16,24}
PY="$VENV/bin/python"

export BENCH_THREADS RAYON_NUM_THREADS=$BENCH_THREADS OMP_NUM_THREADS=$BENCH_THREADS \
    MKL_NUM_THREADS=$BENCH_THREADS

# The release profile, as the `zoetrope` binary is built (the ci profile keeps debug assertions
# and overflow checks and drops LTO: ~25% slower kernels).
cargo build --quiet --release -p zoetrope-models --example wan_bench
BIN=target/release/examples/wan_bench

if [ ! -f "$BENCH_DIR/inputs.safetensors" ]; then
    "$PY" tools/parity/bench_wan.py prepare "$BENCH_DIR" --vae-latent "$VAE_LATENT"
fi

LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
echo "load before: $(uptime)" >&2
for round in $(seq 1 "$ROUNDS"); do
    for c in $COMPONENTS; do
        for d in $DTYPES; do
            echo "round $round/$ROUNDS: $c $d" >&2
            "$BIN" "$BENCH_DIR" --component "$c" --dtype "$d" --warmup "$WARMUP" \
                --runs "$RUNS_PER_ROUND" | tee -a "$LOG" >&2
            "$PY" tools/parity/bench_wan.py time "$BENCH_DIR" --component "$c" --dtype "$d" \
                --warmup "$WARMUP" --runs "$RUNS_PER_ROUND" | tee -a "$LOG" >&2
        done
    done
done
echo "load after: $(uptime)" >&2

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
"$PY" - "$LOG" "$BENCH_THREADS" "$CPU" <<'EOF'
import statistics
import sys

samples, gflops, peak = {}, {}, None
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) == 4 and parts[0] == "SAMPLE":
        samples.setdefault((parts[2], parts[1]), []).append(float(parts[3]))
    elif len(parts) == 4 and parts[0] == "GFLOPS":
        gflops.setdefault((parts[2], parts[1]), []).append(float(parts[3]))
    elif len(parts) == 4 and parts[0] == "PEAK":
        peak = float(parts[3])
print(f"{sys.argv[3]}, {sys.argv[2]} threads; seconds per call, median of n (min-max)")
if peak:
    print(f"measured f32 FMA peak (register-only AVX-512 FMAs, {sys.argv[2]} threads): {peak:.0f} GFLOP/s")
print()
print("| component | zoetrope median | diffusers median | ratio (zoetrope / diffusers) | GFLOP/s zoetrope / diffusers |")
print("|---|---|---|---|---|")
med = statistics.median
for comp in dict.fromkeys(c for c, _ in samples):
    z = samples.get((comp, "zoetrope"), [])
    d = samples.get((comp, "diffusers"), [])
    fmt = lambda s: (f"{med(s):.3f} s (n={len(s)}, {min(s):.3f}-{max(s):.3f})" if s else "-")
    ratio = f"{med(z) / med(d):.2f}x" if z and d else "-"
    gz, gd = gflops.get((comp, "zoetrope")), gflops.get((comp, "diffusers"))
    g = f"{med(gz):.0f} / {med(gd):.0f}" if gz and gd else ""
    if g and peak and not comp.endswith("bf16"):
        g += f" ({100 * med(gz) / peak:.0f}% / {100 * med(gd) / peak:.0f}% of peak)"
    print(f"| {comp} | {fmt(z)} | {fmt(d)} | {ratio} | {g} |")
EOF
