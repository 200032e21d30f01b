#!/usr/bin/env bash
# Trains zoetrope's built-in world model from scratch and writes it where the build embeds it.
# This is the command behind crates/zoetrope-models/weights/world/ (see the README for how long
# each stage ran and on what machine). Every stage checkpoints into $RUNS and continues with
# --resume; --stop-at ends a stage early without changing its learning-rate schedule.
#
#   tools/train/train_world.sh [RUNS_DIR]      (default: runs/)
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS=${1:-runs}
cargo build --release -p zoetrope-cli
Z=target/release/zoetrope

# 1. The VAE on clips rendered on the fly (32x32 crops, batch 8).
$Z train vae --out "$RUNS/world-vae" --config tools/train/world_vae.json \
    --steps 1500 --stop-at 700 --lr 2e-3 --seed 1

# 2. The DiT and text encoder on the VAE's latents (batch 16, mixed shapes).
$Z train dit --vae "$RUNS/world-vae" --out "$RUNS/world-dit" --config tools/train/world_dit.json \
    --steps 2500 --stop-at "${DIT_STOP_AT:-2500}" --seed 1

# 3. Both, averaged weights in f16, as the built-in model.
$Z train export --vae "$RUNS/world-vae" --dit "$RUNS/world-dit" \
    -o crates/zoetrope-models/weights/world --note "tools/train/train_world.sh"
