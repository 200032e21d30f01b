#!/usr/bin/env python3
"""Time diffusers' Wan 2.1 transformer forward and VAE decode on the CPU, for comparison with
zoetrope's `wan_bench` example (`tools/bench/wan_vs_diffusers.sh` runs both, interleaved).

Two sub-commands:

``prepare DIR``
    Builds the benchmark models with random weights (fixed seed) and writes them in diffusers'
    folder layout (``DIR/transformer``, ``DIR/vae``) plus the inputs and diffusers' outputs
    (``DIR/inputs.safetensors``), so both sides run the *same* weights on the *same* inputs and
    the Rust side can check it computes the same result.

``time DIR --component {transformer,vae,attention,gemm} [--dtype f32|bf16] [--warmup W] [--runs N]``
    Loads the models from DIR, runs W untimed warm-up calls then N timed calls, and prints one
    ``SAMPLE diffusers <component> <seconds>`` line per timed call.

Configs (f32, 2 threads, batch 1, no CFG):

* transformer: Wan 2.1 layout at mid size: 6 heads x 128 = dim 768, 8 layers, ffn 3072,
  text_dim 4096, freq_dim 256, patch (1,2,2); latent [1,16,5,20,32] (800 tokens), text
  [1,512,4096], timestep 500.
* VAE: the real Wan 2.1 architecture (diffusers' AutoencoderKLWan defaults: base_dim 96,
  z_dim 16, dim_mult [1,2,4,4], 2 res blocks, temperal_downsample [F,T,T]); decode of a
  [1,16,3,16,24] latent to 9 frames of 128x192 (``--vae-latent`` to change it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from diffusers import AutoencoderKLWan, WanTransformer3DModel  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
torch.set_num_threads(THREADS)

TRANSFORMER = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=6,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=3072,
    num_layers=8,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=1024,
)
LATENT = (1, 16, 5, 20, 32)
TEXT = (1, 512, 4096)
VAE_LATENT = (1, 16, 3, 16, 24)


def prepare(out: Path, vae_latent: tuple[int, ...] = VAE_LATENT) -> None:
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**TRANSFORMER).eval()
    # diffusers initialises the RMS/LayerNorm gains to 1; perturb them a little so no path
    # is a plain identity (as the parity fixtures do).
    with torch.no_grad():
        for name, p in transformer.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.add_(0.05 * torch.randn_like(p))
    transformer.save_pretrained(str(out / "transformer"), safe_serialization=True)

    vae = AutoencoderKLWan().eval()  # the real Wan 2.1 config (the defaults)
    with torch.no_grad():
        for name, p in vae.named_parameters():
            if name.endswith("gamma"):
                p.add_(0.05 * torch.randn_like(p))
    vae.save_pretrained(str(out / "vae"), safe_serialization=True)

    g = torch.Generator().manual_seed(1)
    x = torch.randn(LATENT, generator=g)
    ctx = torch.randn(TEXT, generator=g)
    t = torch.tensor([500.0])
    z = torch.randn(vae_latent, generator=g)
    with torch.inference_mode():
        y = transformer(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]
        video = vae.decode(z, return_dict=False)[0]
    save_file(
        {
            "latent": x.contiguous(),
            "context": ctx.contiguous(),
            "timestep": t,
            "transformer_out": y.contiguous(),
            "vae_latent": z.contiguous(),
            "vae_video": video.contiguous(),
        },
        str(out / "inputs.safetensors"),
    )
    n_t = sum(p.numel() for p in transformer.parameters())
    n_v = sum(p.numel() for p in vae.parameters())
    print(f"prepared {out}: transformer {n_t / 1e6:.1f} M params, VAE {n_v / 1e6:.1f} M params")
    print(f"transformer out {tuple(y.shape)} mean|y| {y.abs().mean():.4f}; "
          f"video {tuple(video.shape)} mean|v| {video.abs().mean():.4f}")


def time_component(out: Path, component: str, warmup: int, runs: int, dtype: str = "f32") -> None:
    """Times one component; ``dtype`` bf16 casts the model and inputs (the check is then against
    the f32 reference). ``attention`` (F.scaled_dot_product_attention at the transformer's
    800 tokens x 6 heads x 128) and ``gemm`` (F.linear, 800 x 768 -> 3072) run on random inputs
    and also print their GFLOP/s."""
    dt = {"f32": torch.float32, "bf16": torch.bfloat16}[dtype]
    label = component if dtype == "f32" else f"{component}-bf16"
    inputs = load_file(str(out / "inputs.safetensors"))
    flops = None
    if component == "transformer":
        model = WanTransformer3DModel.from_pretrained(str(out / "transformer")).eval().to(dt)
        x, ctx, t = inputs["latent"].to(dt), inputs["context"].to(dt), inputs["timestep"]

        def call():
            return model(hidden_states=x, timestep=t, encoder_hidden_states=ctx, return_dict=False)[0]

        ref = inputs["transformer_out"]
    elif component == "vae":
        model = AutoencoderKLWan.from_pretrained(str(out / "vae")).eval().to(dt)
        z = inputs["vae_latent"].to(dt)

        def call():
            return model.decode(z, return_dict=False)[0]

        ref = inputs["vae_video"]
    elif component == "attention":
        g = torch.Generator().manual_seed(3)
        q, k, v = (torch.randn(1, 6, 800, 128, generator=g).to(dt) for _ in range(3))
        flops = 4.0 * 800 * 800 * 6 * 128

        def call():
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

        ref = None
    elif component == "gemm":
        g = torch.Generator().manual_seed(4)
        x = torch.randn(1, 800, 768, generator=g).to(dt)
        w = (0.03 * torch.randn(3072, 768, generator=g)).to(dt)
        b = (0.03 * torch.randn(3072, generator=g)).to(dt)
        flops = 2.0 * 800 * 768 * 3072

        def call():
            return torch.nn.functional.linear(x, w, b)

        ref = None
    else:
        sys.exit(f"unknown component {component}")
    with torch.inference_mode():
        for _ in range(warmup):
            y = call()
        if ref is None:
            ref = y
        diff = (y.float() - ref.float()).abs().max().item() if warmup else float("nan")
        print(f"diffusers {label}: threads={torch.get_num_threads()} max|y-ref|={diff:.3g}")
        for _ in range(runs):
            t0 = time.perf_counter()
            call()
            secs = time.perf_counter() - t0
            print(f"SAMPLE diffusers {label} {secs:.4f}", flush=True)
            if flops:
                print(f"GFLOPS diffusers {label} {flops / secs / 1e9:.1f}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("dir", type=Path)
    p.add_argument("--vae-latent", default=",".join(map(str, VAE_LATENT)),
                   help="B,C,F,H,W of the latent the VAE decodes (default %(default)s)")
    p = sub.add_parser("time")
    p.add_argument("dir", type=Path)
    p.add_argument("--component", required=True, choices=["transformer", "vae", "attention", "gemm"])
    p.add_argument("--dtype", default="f32", choices=["f32", "bf16"])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    if a.cmd == "prepare":
        a.dir.mkdir(parents=True, exist_ok=True)
        prepare(a.dir, tuple(int(v) for v in a.vae_latent.split(",")))
    else:
        time_component(a.dir, a.component, a.warmup, a.runs, a.dtype)


if __name__ == "__main__":
    main()
