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

# 1. The VAE on clips rendered on the fly (32x32 crops, batch 8, foreground-weighted loss).
#    Its encoder is final once the DiT starts (the DiT's latents come from it); --resume
#    --freeze-encoder may go on improving the decoder alone later.
$Z train vae --out "$RUNS/world-vae" --config tools/train/world_vae.json \
    --steps 3000 --stop-at "${VAE_STOP_AT:-1100}" --lr 2e-3 --seed 1
#    Then the decoder alone (the encoder frozen at its averaged weights, so the DiT's latents
#    do not change), on the same schedule.
$Z train vae --out "$RUNS/world-vae" --resume --freeze-encoder --stop-at "${VAE_POLISH_AT:-2000}"

# 2. The DiT and text encoder on the VAE's latents (batch 16, mixed shapes, timestep shift 3).
$Z train dit --vae "$RUNS/world-vae" --out "$RUNS/world-dit" --config tools/train/world_dit.json \
    --steps 6000 --stop-at "${DIT_STOP_AT:-6000}" --seed 1

# 3. The base model (both, averaged weights in f16), then a fine-tune of its DiT and text
#    encoder from that folder with the loss weighted 3x on latent cells that hold part of an
#    object (--foreground-weight; otherwise most of the loss is the flat background). The
#    fine-tune was planned for 3,200 steps and stretched to 5,000 at step 1,600.
$Z train export --vae "$RUNS/world-vae" --dit "$RUNS/world-dit" \
    -o "$RUNS/world-base" --note "tools/train/train_world.sh (base)"
$Z train dit --vae "$RUNS/world-base" --init-from "$RUNS/world-base" --out "$RUNS/world-dit-fg" \
    --config tools/train/world_dit.json --foreground-weight 3 --lr 2e-4 --seed 2 --max-chunks 32 \
    --steps 3200 --stop-at 1600
$Z train dit --out "$RUNS/world-dit-fg" --resume --steps 5000
$Z train export --vae "$RUNS/world-base" --dit "$RUNS/world-dit-fg" \
    -o "$RUNS/world-fg" --note "tools/train/train_world.sh (4-block fine-tune)"

# 4. The same fine-tune again from that folder, the DiT grown from 4 blocks to 5 (the new block
#    starts as the identity; 5 blocks keep the f16 weights under 20 MB), on new clips (seed 4).
$Z train dit --vae "$RUNS/world-fg" --init-from "$RUNS/world-fg" --out "$RUNS/world-dit-5" \
    --config tools/train/world_dit_5.json --foreground-weight 3 --lr 2e-4 --seed 4 \
    --max-chunks 32 --steps 3200

$Z train export --vae "$RUNS/world-fg" --dit "$RUNS/world-dit-5" \
    -o "$RUNS/world-5" --note "tools/train/train_world.sh (5-block fine-tune)"

# 5 to 9. The same fine-tune again, each from the previous export, on new clips: the 5-block
#    DiT and text encoder from SRC's folder into RUN, planned for PLANNED steps and, where
#    STOP_AT and TOTAL are given, stretched to TOTAL at STOP_AT (as the runs went; "-" for a run
#    that kept its plan), exported beside SRC's VAE (the same VAE throughout, averaged weights
#    in f16) to OUT, with any further arguments passed to the export.
finetune_5() {
    local src=$1 run=$2 out=$3 seed=$4 planned=$5 stop_at=$6 total=$7 note=$8
    local export_args=("${@:9}")
    local stop=()
    if [ "$stop_at" != - ]; then stop=(--stop-at "$stop_at"); fi
    $Z train dit --vae "$src" --init-from "$src" --out "$run" \
        --config tools/train/world_dit_5.json --foreground-weight 3 --lr 2e-4 --seed "$seed" \
        --max-chunks 32 --steps "$planned" "${stop[@]}"
    if [ "$total" != - ]; then $Z train dit --out "$run" --resume --steps "$total"; fi
    $Z train export --vae "$src" --dit "$run" -o "$out" --note "$note" "${export_args[@]}"
}
#    Seed 5: planned for 4,000 steps, stretched to 5,500 at step 1,350.
finetune_5 "$RUNS/world-5" "$RUNS/world-dit-5b" "$RUNS/world-5b" 5 4000 1350 5500 \
    "tools/train/train_world.sh (5-block fine-tune, seed 5)"
#    Seed 6: planned for 6,000 steps, stretched to 7,500 at step 2,050.
finetune_5 "$RUNS/world-5b" "$RUNS/world-dit-5c" "$RUNS/world-5c" 6 6000 2050 7500 \
    "tools/train/train_world.sh (5-block fine-tune, seed 6)"
#    Seed 7: 7,500 steps as planned.
finetune_5 "$RUNS/world-5c" "$RUNS/world-dit-5d" "$RUNS/world-5d" 7 7500 - - \
    "tools/train/train_world.sh (5-block fine-tune, seed 7)"
#    Seed 8: 7,500 steps as planned.
finetune_5 "$RUNS/world-5d" "$RUNS/world-dit-5e" "$RUNS/world-5e" 8 7500 - - \
    "tools/train/train_world.sh (5-block fine-tune, seed 8)"
#    Seed 9: planned for 6,500 steps, stretched to 7,500 at step 850; exported with guidance 3
#    as its default (chosen on the 66 training-scene validation captions: mean of three seeds
#    77.8% at 3, 77.1% at 4).
finetune_5 "$RUNS/world-5e" "$RUNS/world-dit-5f" "$RUNS/world-5f" 9 6500 850 7500 \
    "tools/train/train_world.sh (5-block fine-tune, seed 9)" --guidance 3

# 10. The same fine-tune from that folder, the DiT grown from 5 blocks to 6 (the new block starts
#     as the identity and has no cross-attention, `"cross_attn_blocks": 5`, which keeps 6 blocks
#     under 20 MB in f16), on new clips (seed 10), 7,000 steps.
$Z train dit --vae "$RUNS/world-5f" --init-from "$RUNS/world-5f" --out "$RUNS/world-dit-6" \
    --config tools/train/world_dit_6.json --foreground-weight 3 --lr 2e-4 --seed 10 \
    --max-chunks 32 --steps 7000
$Z train export --vae "$RUNS/world-5f" --dit "$RUNS/world-dit-6" \
    -o "$RUNS/world-6" --note "tools/train/train_world.sh (6-block fine-tune, seed 10)" --guidance 3

# 11. The decoder polished again, from that folder's VAE with the encoder frozen at its weights
#     (the DiTs' latents do not change), 1,500 steps on new clips (seed 12), then once more from
#     that run's averaged weights, 1,200 steps at a lower peak (seed 13).
$Z train vae --init-from "$RUNS/world-6" --freeze-encoder --out "$RUNS/world-vae-polish" \
    --steps 1500 --lr 1e-3 --seed 12
$Z train vae --init-from "$RUNS/world-vae-polish" --freeze-encoder --out "$RUNS/world-vae-polish2" \
    --steps 1200 --lr 5e-4 --seed 13

# 12. The 6-block fine-tune once more from the stage-10 folder, on new clips (seed 11), 5,000
#     steps; exported beside the twice-polished decoder, it is the built-in model.
$Z train dit --vae "$RUNS/world-6" --init-from "$RUNS/world-6" --out "$RUNS/world-dit-6b" \
    --config tools/train/world_dit_6.json --foreground-weight 3 --lr 2e-4 --seed 11 \
    --max-chunks 32 --steps 5000
$Z train export --vae "$RUNS/world-vae-polish2" --dit "$RUNS/world-dit-6b" \
    -o crates/zoetrope-models/weights/world --note "tools/train/train_world.sh" --guidance 3
