#!/usr/bin/env python3
"""Generate tiny Wan 2.1 text-to-video reference fixtures with Hugging Face diffusers.

Purpose
-------
zoetrope re-implements the Wan 2.1 T2V pipeline natively in Rust (candle).  To prove
the Rust port computes the same numbers as the reference implementation, this script
builds *tiny, random-weight* instances of the real architectures (umT5 encoder,
WanTransformer3DModel, AutoencoderKLWan, UniPC / flow-match Euler schedulers) with
pinned diffusers/transformers/torch versions, runs them in float32 on the CPU with
fixed seeds, and writes the inputs/outputs as safetensors + JSON under
``tests/fixtures/wan/``.

Nothing is downloaded: every config is written in this file, the tokenizer (a small
hand-built Unigram vocab in umT5's tokenizer.json format) is built offline with the
``tokenizers`` library, and ``HF_HUB_OFFLINE=1`` is forced.  Runs are bit-reproducible
(``manifest.json`` records a sha256 of every file); it takes ~10 s on 2 CPU cores.

Usage (see tools/parity/README.md)::

    python3 -m venv /work/venv-parity
    /work/venv-parity/bin/pip install -r tools/parity/requirements.txt
    /work/venv-parity/bin/python tools/parity/make_wan_fixtures.py [--out tests/fixtures/wan]

Outputs (all tensors float32 unless stated; see ``manifest.json`` written next to them
for the exact list of tensor names, shapes and dtypes):

* ``tiny/``                        diffusers folder layout of the tiny pipeline
                                   (model_index.json, transformer/, vae/, text_encoder/,
                                   tokenizer/, scheduler/ = UniPC as in Wan's repos).
* ``tiny_wan_original.safetensors`` the same transformer weights with the original Wan
                                   key names (``model.diffusion_model.blocks.0.self_attn.q.weight``
                                   ...), for testing the Rust key remapping.
* ``schedulers/*.json``            UniPC and FlowMatchEuler scheduler configs.
* ``text_encoder_ref.*``           prompt clean-up, token ids, attention masks, raw umT5
                                   hidden states and the final (trimmed + zero padded)
                                   ``prompt_embeds`` exactly as WanPipeline builds them.
* ``transformer_ref.*``            transformer forward at several timesteps for a fixed
                                   non-square latent, plus intermediates (RoPE tables,
                                   time/text embeddings, per-block hidden states).
* ``vae_ref.*``                    VAE encode (moments with the logvar half clamped,
                                   posterior mean/logvar) and decode (of that mean and of
                                   an independent random latent) of a non-square 9-frame
                                   clip, plus a tiled decode (``enable_tiling``) of a
                                   larger random latent.
* ``scheduler_ref.*``              scheduler-only trajectories (timesteps, sigmas, states
                                   after every step) driven by fixed pseudo model outputs.
* ``pipeline_ref.*``               full WanPipeline runs from given latents for
                                   {unipc, flow_match_euler} x {no CFG, CFG 5.0 + negative
                                   prompt}: per-step latents, final latents and video.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import html
import re
import json
import os
import shutil
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO_ROOT / "tests" / "fixtures" / "wan"

SEED = 20250101
SIZE_LIMIT_BYTES = 3 * 1024 * 1024

# --------------------------------------------------------------------------------------
# Tiny configurations (the real Wan 2.1 T2V 1.3B values are given in comments).
# --------------------------------------------------------------------------------------

Z_DIM = 16  # real: 16 (latent channels, shared by VAE and transformer)
TEXT_DIM = 32  # real: 4096 (umT5-XXL d_model)
MAX_SEQ_LEN = 32  # real: 512 (WanPipeline default max_sequence_length)

TRANSFORMER_CONFIG = dict(
    patch_size=[1, 2, 2],  # real: (1, 2, 2)
    num_attention_heads=2,  # real: 12 (1.3B) / 40 (14B)
    attention_head_dim=16,  # real: 128 -> RoPE split t/h/w = 16-2*4, 4, 4 = 8/4/4 (real 44/42/42)
    in_channels=Z_DIM,
    out_channels=Z_DIM,
    text_dim=TEXT_DIM,
    freq_dim=32,  # real: 256
    ffn_dim=64,  # real: 8960 (1.3B)
    num_layers=2,  # real: 30 (1.3B)
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=1024,  # real: 1024
    pos_embed_seq_len=None,
)

VAE_CONFIG = dict(
    base_dim=4,  # real: 96
    z_dim=Z_DIM,
    dim_mult=[1, 2, 4, 4],  # real: [1, 2, 4, 4]
    num_res_blocks=1,  # real: 2
    attn_scales=[],
    temperal_downsample=[False, True, True],  # real (diffusers' spelling)
    dropout=0.0,
    # Not Wan's real statistics: deliberately distinct per-channel values so that the
    # (de)normalisation is exercised.  Real values are in diffusers' AutoencoderKLWan defaults.
    latents_mean=[round(-0.8 + 0.1 * i, 4) for i in range(Z_DIM)],
    latents_std=[round(0.6 + 0.15 * i, 4) for i in range(Z_DIM)],
)

TEXT_ENCODER_CONFIG = dict(
    vocab_size=256,  # real: 256384
    d_model=TEXT_DIM,  # real: 4096
    d_kv=16,  # real: 64
    d_ff=64,  # real: 10240
    num_layers=2,  # real: 24
    num_decoder_layers=2,
    num_heads=2,  # real: 64
    relative_attention_num_buckets=32,  # real: 32
    relative_attention_max_distance=128,  # real: 128
    dropout_rate=0.0,
    layer_norm_epsilon=1e-6,
    feed_forward_proj="gated-gelu",  # -> gelu_new (tanh approximation), gated
    is_encoder_decoder=True,
    use_cache=False,
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
    tie_word_embeddings=False,  # as google/umt5-xxl; UMT5Config forces True internally anyway
)

FLOW_SHIFT = 3.0  # Wan2.1-T2V-1.3B-Diffusers ships flow_shift 3.0 (5.0 recommended for 720p)

UNIPC_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    trained_betas=None,
    solver_order=2,
    prediction_type="flow_prediction",
    thresholding=False,
    dynamic_thresholding_ratio=0.995,
    sample_max_value=1.0,
    predict_x0=True,
    solver_type="bh2",
    lower_order_final=True,
    disable_corrector=[],
    solver_p=None,
    use_karras_sigmas=False,
    use_exponential_sigmas=False,
    use_beta_sigmas=False,
    use_flow_sigmas=True,
    flow_shift=FLOW_SHIFT,
    timestep_spacing="linspace",
    steps_offset=0,
    final_sigmas_type="zero",
    rescale_betas_zero_snr=False,
)

FLOW_MATCH_EULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=FLOW_SHIFT,
    use_dynamic_shifting=False,
    invert_sigmas=False,
    shift_terminal=None,
    use_karras_sigmas=False,
    use_exponential_sigmas=False,
    use_beta_sigmas=False,
    stochastic_sampling=False,
)

# Prompts: include things WanPipeline's prompt_clean() changes (HTML entities, double
# escaping, mojibake that ftfy repairs, runs of whitespace/newlines/tabs, leading and
# trailing blanks) and one long prompt that gets truncated to MAX_SEQ_LEN.
PROMPTS = [
    "A cat walks on the grass, realistic style.",
    "  A red fox   jumps\tover a lazy dog\n at sunset &amp; the sky glows &amp;lt;orange&amp;gt;. ",
    "Caf\u00c3\u00a9 by the sea \u2014 waves crash on rocks, cinematic lighting, 4k",
    "A very long prompt about a small robot that walks through a busy city street full of people, "
    "cars, bright neon signs, rain puddles and reflections, while a drone follows it from above.",
    "",
]
NEGATIVE_PROMPT = "blurry, low quality, static, distorted"
PIPELINE_PROMPT = PROMPTS[0]

TOKENIZER_CORPUS = [
    "A cat walks on the grass, realistic style.",
    "A red fox jumps over a lazy dog at sunset.",
    "The sky glows orange and purple above the quiet sea.",
    "Waves crash on the rocks, cinematic lighting, 4k, high detail.",
    "A small robot walks through a busy city street full of people.",
    "Cars drive past bright neon signs, rain puddles and reflections.",
    "A drone follows the robot from above in slow motion.",
    "Close-up shot of a cup of coffee in a cafe by the window.",
    "blurry, low quality, static, distorted, worst quality, jpeg artifacts",
    "An astronaut rides a horse on the moon, photorealistic.",
    "Two dogs play with a ball in a sunny park, camera pans left.",
    "Snow falls on a mountain village at night, warm lights in windows.",
    "A chef cooks noodles in a steaming kitchen, fast cuts.",
    "Fish swim between colourful corals under clear blue water.",
    "Leaves fall from trees in an autumn forest, gentle wind.",
    "A train crosses a bridge over a deep green valley.",
    "Fireworks explode above the river during a summer festival.",
    "An old man reads a newspaper on a bench, black and white film.",
    "Cafe, resume, naive, jalapeno: accents and unicode punctuation - quotes 'x' \"y\".",
    "Numbers 0 1 2 3 4 5 6 7 8 9 10 100 2024, symbols & < > % $ # @ !",
]


def set_determinism() -> None:
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    np.random.seed(SEED % (2**32))
    torch.use_deterministic_algorithms(True)


def seeded(offset: int) -> torch.Generator:
    return torch.Generator().manual_seed(SEED + offset)


def randn(shape, offset: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=seeded(offset), dtype=torch.float32) * scale


def perturb_constant_parameters(module: torch.nn.Module, offset: int) -> list[str]:
    """Add small noise to every parameter that is initialised to a constant (norm weights = 1,
    biases = 0, ...), so that no path of the tiny model is trivially identity/zero."""
    gen = seeded(offset)
    touched = []
    with torch.no_grad():
        for name, p in module.named_parameters():
            flat = p.detach().reshape(-1)
            if flat.numel() == 0:
                continue
            if bool((flat == flat[0]).all()):
                value = float(flat[0])
                scale = 0.1 if value != 0.0 else 0.05
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
                touched.append(name)
    return touched


# --------------------------------------------------------------------------------------
# Builders
# --------------------------------------------------------------------------------------


def build_unigram_vocab() -> list[tuple[str, float]]:
    """Deterministic Unigram vocabulary (piece, log-prob score) from TOKENIZER_CORPUS:
    <pad>=0, </s>=1, <unk>=2 (as umT5), then frequent whole words ("\u2581word"), a few
    suffixes, and single characters so that unseen words split into sub-word pieces."""
    from collections import Counter
    import math

    words = Counter()
    chars = Counter()
    for line in TOKENIZER_CORPUS:
        for w in line.split():
            words[w] += 1
            chars.update(w)
    budget = TEXT_ENCODER_CONFIG["vocab_size"] - 3
    char_pieces = sorted(chars)  # every character of the corpus, no leading space marker
    suffixes = ["ing", "ed", "es", "ly", "er", "s", ","]
    n_words = budget - len(char_pieces) - len(suffixes) - 1
    top = sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))[:n_words]
    total = sum(words.values())
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    seen = {p for p, _ in vocab}

    def push(piece: str, score: float) -> None:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, round(score, 4)))

    for w, c in top:
        push("\u2581" + w, math.log(c / total))
    for suf in suffixes:
        push(suf, -6.0)
    push("\u2581", -5.0)
    for ch in char_pieces:
        push(ch, -9.0 + math.log(chars[ch]) / 10.0)
    return vocab


def write_tokenizer_files(tok, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    special = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}
    tok_cfg = {
        "tokenizer_class": "T5Tokenizer",  # as google/umt5-xxl and Wan-AI/*-Diffusers
        "model_max_length": 512,
        "padding_side": "right",
        "truncation_side": "right",
        "extra_ids": 0,
        "additional_special_tokens": [],
        "clean_up_tokenization_spaces": True,
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def build_tokenizer(folder: Path):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    # Hand-built Unigram vocab (the tokenizers UnigramTrainer is multi-threaded and not
    # reproducible from run to run).
    tok = Tokenizer(models.Unigram(build_unigram_vocab(), unk_id=2, byte_fallback=False))
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<pad>", "</s>", "<unk>")])
    # umT5's real tokenizer.json uses a Precompiled (NFKC-like) normalizer + WhitespaceSplit +
    # Metaspace pre-tokenizer.  We use NFKC + the same Metaspace settings.
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    assert tok.token_to_id("<pad>") == 0 and tok.token_to_id("</s>") == 1 and tok.token_to_id("<unk>") == 2
    assert tok.get_vocab_size() <= TEXT_ENCODER_CONFIG["vocab_size"], tok.get_vocab_size()
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    write_tokenizer_files(tok, folder)
    return tok


def build_pipeline(tiny: Path):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    raw_tok = build_tokenizer(tiny / "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(str(tiny / "tokenizer"))

    torch.manual_seed(SEED + 1)
    te_cfg = UMT5Config(**TEXT_ENCODER_CONFIG)
    text_encoder = UMT5EncoderModel(te_cfg).eval()
    text_encoder.config._attn_implementation = "eager"
    te_touched = perturb_constant_parameters(text_encoder, 101)

    torch.manual_seed(SEED + 2)
    transformer = WanTransformer3DModel(**TRANSFORMER_CONFIG).eval()
    tr_touched = perturb_constant_parameters(transformer, 102)

    torch.manual_seed(SEED + 3)
    vae = AutoencoderKLWan(**VAE_CONFIG).eval()
    vae_touched = perturb_constant_parameters(vae, 103)

    scheduler = UniPCMultistepScheduler(**UNIPC_CONFIG)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler, transformer=transformer
    )
    pipe.save_pretrained(str(tiny), safe_serialization=True)
    # save_pretrained rewrites the tokenizer folder; restore our exact files (the Rust side
    # reads tokenizer.json with the `tokenizers` crate).  load_pipeline() re-reads them.
    write_tokenizer_files(raw_tok, tiny / "tokenizer")
    return {"text_encoder": te_touched, "transformer": tr_touched, "vae": vae_touched}


def load_pipeline(tiny: Path):
    from diffusers import WanPipeline

    pipe = WanPipeline.from_pretrained(str(tiny), dtype=torch.float32, local_files_only=True)
    pipe.text_encoder.config._attn_implementation = "eager"
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.text_encoder, pipe.transformer, pipe.vae):
        m.eval()
    return pipe


# --------------------------------------------------------------------------------------
# Original-Wan key names for the transformer
# --------------------------------------------------------------------------------------


def diffusers_to_original_key(key: str) -> str:
    """Inverse of diffusers' convert_wan_transformer_to_diffusers (T2V keys only)."""
    if key == "scale_shift_table":
        return "head.modulation"
    if key.startswith("proj_out."):
        return "head.head." + key[len("proj_out.") :]
    top = {
        "condition_embedder.time_embedder.linear_1.": "time_embedding.0.",
        "condition_embedder.time_embedder.linear_2.": "time_embedding.2.",
        "condition_embedder.text_embedder.linear_1.": "text_embedding.0.",
        "condition_embedder.text_embedder.linear_2.": "text_embedding.2.",
        "condition_embedder.time_proj.": "time_projection.1.",
    }
    for a, b in top.items():
        if key.startswith(a):
            return b + key[len(a) :]
    if key.startswith("blocks."):
        parts = key.split(".")
        idx, rest = parts[1], ".".join(parts[2:])
        block = {
            "scale_shift_table": "modulation",
            "attn1.to_q.": "self_attn.q.",
            "attn1.to_k.": "self_attn.k.",
            "attn1.to_v.": "self_attn.v.",
            "attn1.to_out.0.": "self_attn.o.",
            "attn1.norm_q.": "self_attn.norm_q.",
            "attn1.norm_k.": "self_attn.norm_k.",
            "attn2.to_q.": "cross_attn.q.",
            "attn2.to_k.": "cross_attn.k.",
            "attn2.to_v.": "cross_attn.v.",
            "attn2.to_out.0.": "cross_attn.o.",
            "attn2.norm_q.": "cross_attn.norm_q.",
            "attn2.norm_k.": "cross_attn.norm_k.",
            "norm2.": "norm3.",  # diffusers norm2 (cross-attn norm, affine) == Wan norm3
            "ffn.net.0.proj.": "ffn.0.",
            "ffn.net.2.": "ffn.2.",
        }
        for a, b in block.items():
            if rest == a or rest.startswith(a):
                return f"blocks.{idx}.{b}{rest[len(a):]}"
        raise KeyError(key)
    if key.startswith("patch_embedding."):
        return key
    raise KeyError(key)


def write_original_checkpoint(tiny: Path, path: Path) -> dict:
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    sd = load_file(str(tiny / "transformer" / "diffusion_pytorch_model.safetensors"))
    orig = {"model.diffusion_model." + diffusers_to_original_key(k): v.contiguous() for k, v in sd.items()}
    # Round-trip through diffusers' own converter to prove the inverse mapping is exact.
    back = convert_wan_transformer_to_diffusers({k: v.clone() for k, v in orig.items()})
    assert set(back) == set(sd), (sorted(set(back) ^ set(sd)))
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    # (one metadata key only: safetensors writes metadata from a hash map, several keys reorder run to run)
    save_file(orig, str(path), metadata={"format": "pt"})
    # ...and that diffusers' own single-file loader accepts the file.
    from diffusers import WanTransformer3DModel

    m = WanTransformer3DModel.from_single_file(
        str(path), config=str(tiny), subfolder="transformer", local_files_only=True
    )
    msd = m.state_dict()
    assert set(msd) == set(sd) and all(torch.equal(msd[k], sd[k]) for k in sd)
    return {diffusers_to_original_key(k): k for k in sorted(sd)}


# --------------------------------------------------------------------------------------
# Fixture writers
# --------------------------------------------------------------------------------------


class FixtureSet:
    def __init__(self, out: Path, name: str):
        self.out, self.name = out, name
        self.tensors: dict[str, torch.Tensor] = {}
        self.meta: dict = {}

    def add(self, key: str, t: torch.Tensor) -> None:
        assert key not in self.tensors, key
        t = t.detach().cpu()
        if t.is_floating_point():
            t = t.to(torch.float32)
        self.tensors[key] = t.contiguous()

    def write(self) -> dict:
        save_file(self.tensors, str(self.out / f"{self.name}.safetensors"), metadata={"format": "pt"})
        self.meta["tensors"] = {
            k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in self.tensors.items()
        }
        (self.out / f"{self.name}.json").write_text(json.dumps(self.meta, indent=2, ensure_ascii=False) + "\n")
        return self.meta["tensors"]


def text_encoder_fixtures(pipe, out: Path) -> FixtureSet:
    from diffusers.pipelines.wan.pipeline_wan import prompt_clean
    from diffusers.utils import is_ftfy_available
    from tokenizers import Tokenizer

    fx = FixtureSet(out, "text_encoder_ref")
    cleaned = [prompt_clean(p) for p in PROMPTS]
    # What prompt_clean gives when ftfy is NOT installed (html.unescape x2 + whitespace only).
    cleaned_no_ftfy = [re.sub(r"\s+", " ", html.unescape(html.unescape(p)).strip()).strip() for p in PROMPTS]
    enc = pipe.tokenizer(
        cleaned,
        padding="max_length",
        max_length=MAX_SEQ_LEN,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    ids, mask = enc.input_ids, enc.attention_mask

    # Cross-check against the plain `tokenizers` library (what Rust uses) + manual
    # truncate-keeping-EOS/pad.
    raw = Tokenizer.from_file(str(out / "tiny" / "tokenizer" / "tokenizer.json"))
    raw_ids = []
    for c in cleaned:
        e = raw.encode(c, add_special_tokens=False).ids[: MAX_SEQ_LEN - 1] + [1]
        raw_ids.append(e + [0] * (MAX_SEQ_LEN - len(e)))
    tokenizers_lib_matches = bool(torch.equal(torch.tensor(raw_ids), ids))

    with torch.no_grad():
        hidden = pipe.text_encoder(ids, mask).last_hidden_state
        embeds = pipe._get_t5_prompt_embeds(prompt=PROMPTS, max_sequence_length=MAX_SEQ_LEN, device="cpu")
    fx.add("input_ids", ids.to(torch.int64))
    fx.add("attention_mask", mask.to(torch.int64))
    fx.add("last_hidden_state", hidden)
    fx.add("prompt_embeds", embeds)
    seq_lens = mask.sum(1).tolist()
    # sanity: padding rows are exactly zero, real rows equal the raw hidden states
    for i, n in enumerate(seq_lens):
        assert torch.equal(embeds[i, :n], hidden[i, :n])
        assert float(embeds[i, n:].abs().max() if n < MAX_SEQ_LEN else 0.0) == 0.0
    fx.meta.update(
        prompts=PROMPTS,
        cleaned_prompts=cleaned,
        cleaned_prompts_without_ftfy=cleaned_no_ftfy,
        prompts_where_ftfy_matters=[i for i, (a, b) in enumerate(zip(cleaned, cleaned_no_ftfy)) if a != b],
        ftfy_available=bool(is_ftfy_available()),
        max_sequence_length=MAX_SEQ_LEN,
        seq_lens=seq_lens,
        input_ids=ids.tolist(),
        tokens=[pipe.tokenizer.convert_ids_to_tokens(r) for r in ids.tolist()],
        tokenizers_lib_matches_transformers=tokenizers_lib_matches,
        notes=[
            "prompt_clean = ftfy.fix_text (if installed) -> html.unescape twice -> strip -> re.sub(r'\\s+', ' ') -> strip",
            "tokenizer(padding='max_length', max_length, truncation=True, add_special_tokens=True): "
            "ids + '</s>'(1), truncated to max_length-1 tokens before the EOS, padded with <pad>(0); mask 1 for real+EOS",
            "last_hidden_state = UMT5EncoderModel(input_ids, attention_mask) (padded keys masked, padded queries still computed)",
            "prompt_embeds = last_hidden_state[:, :seq_len] then zero-padded back to max_sequence_length",
        ],
    )
    return fx


def transformer_fixtures(pipe, out: Path, text_fx: FixtureSet) -> FixtureSet:
    tr = pipe.transformer
    fx = FixtureSet(out, "transformer_ref")
    latent = randn((1, Z_DIM, 3, 6, 10), 201)  # patch grid (3, 3, 5) -> 45 tokens
    # context: prompt 0 (short, zero padded) and prompt 1 as a batch-of-one each
    context = text_fx.tensors["prompt_embeds"][0:1].clone()
    timesteps = [999.0, 937.5, 500.0, 10.0, 0.0]
    fx.add("hidden_states", latent)
    fx.add("encoder_hidden_states", context)
    fx.add("timesteps", torch.tensor(timesteps, dtype=torch.float32))

    captured: dict[str, torch.Tensor] = {}

    def hook(name):
        def fn(_m, _inp, output):
            captured[name] = output[0] if isinstance(output, tuple) else output

        return fn

    handles = [tr.patch_embedding.register_forward_hook(hook("patch_embedding"))]
    for i, b in enumerate(tr.blocks):
        handles.append(b.register_forward_hook(hook(f"block{i}")))
    handles.append(tr.condition_embedder.register_forward_hook(hook("condition_embedder")))
    cond_outputs = {}

    def cond_hook(_m, _inp, output):
        cond_outputs["v"] = output

    handles.append(tr.condition_embedder.register_forward_hook(cond_hook))

    outs = []
    with torch.no_grad():
        rope_cos, rope_sin = tr.rope(latent)
        fx.add("rope_cos", rope_cos)
        fx.add("rope_sin", rope_sin)
        for ti, t in enumerate(timesteps):
            o = tr(hidden_states=latent, timestep=torch.tensor([t]), encoder_hidden_states=context, return_dict=False)[0]
            outs.append(o)
            fx.add(f"out_t{ti}", o)
            temb, tproj, ctx, _ = cond_outputs["v"]
            fx.add(f"temb_t{ti}", temb)
            fx.add(f"timestep_proj_t{ti}", tproj)
            if ti == 0:
                fx.add("context_embedded", ctx)
                fx.add("patch_tokens", captured["patch_embedding"].flatten(2).transpose(1, 2))
            for i in range(len(tr.blocks)):
                fx.add(f"block{i}_out_t{ti}", captured[f"block{i}"])
        # timestep as int64 (what UniPC hands the model) must give the same result as float
        o_int = tr(hidden_states=latent, timestep=torch.tensor([500]), encoder_hidden_states=context, return_dict=False)[0]
        assert torch.allclose(o_int, outs[2])
        # batch of 2 with different contexts/timesteps (CFG-style batching)
        lat2 = torch.cat([latent, randn((1, Z_DIM, 3, 6, 10), 202)])
        ctx2 = torch.cat([context, text_fx.tensors["prompt_embeds"][1:2]])
        t2 = torch.tensor([750.0, 250.0])
        o2 = tr(hidden_states=lat2, timestep=t2, encoder_hidden_states=ctx2, return_dict=False)[0]
        fx.add("batch2_hidden_states", lat2)
        fx.add("batch2_encoder_hidden_states", ctx2)
        fx.add("batch2_timesteps", t2)
        fx.add("batch2_out", o2)
    for h in handles:
        h.remove()
    diffs = [float((outs[i] - outs[i + 1]).abs().max()) for i in range(len(outs) - 1)]
    assert all(d > 1e-3 for d in diffs), diffs
    head_dim = TRANSFORMER_CONFIG["attention_head_dim"]
    fx.meta.update(
        config=TRANSFORMER_CONFIG,
        timesteps=timesteps,
        patch_grid=[3, 3, 5],
        rope_split_t_h_w=[tr.rope.t_dim, tr.rope.h_dim, tr.rope.w_dim],
        max_abs_diff_between_consecutive_timesteps=diffs,
        notes=[
            f"RoPE: h_dim = w_dim = 2*(head_dim//6) = {2 * (head_dim // 6)}, t_dim = head_dim - h_dim - w_dim = {tr.rope.t_dim}; "
            "freqs computed in float64 (theta 10000, per-part dim), cos/sin repeat_interleaved x2 then cast to f32; "
            "rotation on interleaved pairs (x[2i], x[2i+1]) of each head; table index = frame/row/col of the patch grid",
            "rope_cos/rope_sin: [1, tokens, 1, head_dim] for the fixture's grid, token order f-major then h then w",
            "time: sinusoidal(freq_dim, flip_sin_to_cos -> [cos, sin], shift 0, max_period 10000) in f32 -> linear_1 -> SiLU -> linear_2 = temb; "
            "timestep_proj = time_proj(SiLU(temb)) -> [B, 6*dim] -> [B, 6, dim]",
            "context_embedded = text_embedder(encoder_hidden_states) = linear_2(gelu_tanh(linear_1(x))); NO attention mask in cross-attn, "
            "zero padded context rows still produce non-zero keys/values (bias)",
            "blockN_out_tK: hidden states [B, tokens, dim] after block N at timestep index K; patch_tokens: after Conv3d patch embed, flattened",
            "out_tK: [B, C, F, H, W] (unpatchified)",
        ],
    )
    return fx


def vae_fixtures(pipe, out: Path) -> FixtureSet:
    vae = pipe.vae
    fx = FixtureSet(out, "vae_ref")
    # smooth-ish random video in [-1, 1], 9 frames 24x40 -> latent 3 x 3 x 5
    base = randn((1, 3, 9, 6, 10), 301)
    video = torch.nn.functional.interpolate(base, size=(9, 24, 40), mode="trilinear", align_corners=False)
    video = torch.tanh(video + 0.1 * randn((1, 3, 9, 24, 40), 302))
    with torch.no_grad():
        dist = vae.encode(video).latent_dist
        # quant_conv output with its logvar half already clamped to [-30, 20]
        # (DiagonalGaussianDistribution clamps the logvar when it is built)
        raw = torch.cat([dist.mean, dist.logvar], dim=1)
        mean = dist.mean
        dec = vae.decode(mean, return_dict=False)[0]
        z_rand = randn((1, Z_DIM, 3, 3, 5), 303)
        dec_rand = vae.decode(z_rand, return_dict=False)[0]
        # also a single latent frame (first chunk only, image mode)
        dec_one = vae.decode(z_rand[:, :, :1], return_dict=False)[0]
        enc_one = vae.encode(video[:, :, :1]).latent_dist.mean
    fx.add("video", video)
    fx.add("enc_moments", raw)
    fx.add("enc_mean", mean)
    fx.add("enc_logvar", dist.logvar)
    fx.add("dec_from_mean", dec)
    fx.add("z_rand", z_rand)
    fx.add("dec_from_z_rand", dec_rand)
    fx.add("dec_from_z_rand_frame0", dec_one)
    fx.add("enc_mean_frame0", enc_one)
    sat = float((dec_rand.abs() >= 1.0).float().mean())
    fx.meta.update(
        config=VAE_CONFIG,
        fraction_of_dec_from_z_rand_clamped=sat,
        dec_from_z_rand_std=float(dec_rand.std()),
        notes=[
            "encode: x [B,3,1+4k,H,W] processed in chunks of frames [0], [1..4], [5..8], ... with the causal feature cache "
            "(CACHE_T = 2 frames carried per causal conv) -> quant_conv -> moments [B, 2*z, 1+k, H/8, W/8]; "
            "mean = moments[:, :z], logvar = clamp(moments[:, z:], -30, 20); latent_dist.mode() = mean. "
            "The stored enc_moments holds the logvar half AFTER that clamp (cat([mean, clamped logvar]))",
            "decode: post_quant_conv over all frames, then decoder one latent frame at a time with the feature cache; "
            "first chunk uses first_chunk=True; upsample3d: first chunk skips time_conv (cache marked 'Rep'), the next chunk "
            "pads the time_conv with zeros instead of a cached frame; output frames = 1 + 4*(T-1); output clamped to [-1, 1]",
            "WanRMS_norm: F.normalize over channels (x / max(||x||_2, 1e-12)) * sqrt(C) * gamma (+ bias 0), NOT mean-of-squares+eps",
            "Upsample: nearest-exact x2 spatial, Conv2d to dim//2 channels (upsample_out_dim) per frame; "
            "downsample2d/3d: ZeroPad2d (0,1,0,1) then 3x3 stride-2 conv; downsample3d time_conv stride 2 over [last cached frame, current]",
            "mid-block attention: single head over H*W per frame, RMS-normed, qkv via 1x1 conv",
        ],
    )
    return fx


# Tiled decode (AutoencoderKLWan.enable_tiling) settings for the tiled_* fixture: in latent
# units tiles are 3x3 with stride 2, so a 5x7 latent gives 3 rows x 4 columns of tiles and
# both blend_v and blend_h (8-pixel overlaps) are exercised.
VAE_TILING = dict(
    tile_sample_min_height=24,
    tile_sample_min_width=24,
    tile_sample_stride_height=16,
    tile_sample_stride_width=16,
)


def vae_tiled_fixtures(pipe, fx: FixtureSet) -> None:
    """Add the tiled-decode reference to the vae_ref set.

    Runs after every other fixture, on a copy of the VAE (so the pipeline's VAE keeps
    tiling off), with a latent drawn from its own generator, so that no other tensor or
    file changes when this is added.
    """
    vae = copy.deepcopy(pipe.vae)
    vae.enable_tiling(**VAE_TILING)
    z = randn((1, Z_DIM, 2, 5, 7), 304)
    with torch.no_grad():
        dec = vae.decode(z, return_dict=False)[0]
    assert vae.use_tiling and dec.shape == (1, 3, 5, 40, 56), dec.shape
    fx.add("tiled_z", z)
    fx.add("tiled_decode", dec)
    fx.meta.update(
        tiling=VAE_TILING,
        fraction_of_tiled_decode_clamped=float((dec.abs() >= 1.0).float().mean()),
        tiled_decode_std=float(dec.std()),
        tiled_notes=[
            "tiled_decode = vae.decode(tiled_z) after vae.enable_tiling(**tiling): latent tiles of "
            "min//8 = 3 x 3 at stride//8 = 2 (rows at 0,2,4; columns at 0,2,4,6; edge tiles are cut short); "
            "each tile is decoded on its own (clear_cache, post_quant_conv, one latent frame at a time with the "
            "feature cache, first_chunk for frame 0)",
            "tiles are blended with blend_v then blend_h over blend = min - stride = 8 pixels "
            "(linear ramp x/blend from the previous tile's tail), each cropped to stride x stride, "
            "concatenated, cropped to the full size, then clamped to [-1, 1] (only after the blend)",
        ],
    )


def scheduler_fixtures(out: Path) -> FixtureSet:
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    fx = FixtureSet(out, "scheduler_ref")
    shape = (1, Z_DIM, 2, 2, 3)
    meta = {}
    for sname, cls, cfg in (
        ("unipc", UniPCMultistepScheduler, UNIPC_CONFIG),
        ("flow_match_euler", FlowMatchEulerDiscreteScheduler, FLOW_MATCH_EULER_CONFIG),
    ):
        for steps in (4, 10, 50):
            s = cls(**cfg)
            s.set_timesteps(steps, device="cpu")
            s.set_begin_index(0)
            key = f"{sname}_n{steps}"
            fx.add(f"{key}_timesteps", s.timesteps.clone())
            fx.add(f"{key}_sigmas", s.sigmas.clone())
            meta[key] = {
                "timesteps": s.timesteps.tolist(),
                "sigmas": s.sigmas.tolist(),
                "timesteps_dtype": str(s.timesteps.dtype),
            }
            if steps == 50:
                continue
            sample = randn(shape, 400 + steps)
            fx.add(f"{key}_sample_init", sample)
            for i, t in enumerate(s.timesteps):
                # deterministic pseudo "model output" that depends on the current sample
                model_out = 0.5 * sample + randn(shape, 500 + 10 * steps + i, 0.7)
                fx.add(f"{key}_model_out_{i}", model_out)
                sample = s.step(model_out, t, sample, return_dict=False)[0]
                fx.add(f"{key}_sample_{i}", sample)
    fx.meta.update(
        unipc_config=UNIPC_CONFIG,
        flow_match_euler_config=FLOW_MATCH_EULER_CONFIG,
        schedules=meta,
        notes=[
            "Pipeline calls: set_timesteps(n), set_begin_index(0), then for each t: step(model_out, t, sample)",
            "model_out_i = 0.5 * sample_{i-1} + N(0, 0.7^2) noise (fixed), sample_{-1} = sample_init",
            "UniPC (flow): sigmas = linspace(1, 1/1000, n+1)[:-1] (float64), shifted s*x/(1+(s-1)*x), sigma[0] -= 1e-6 if ==1, "
            "timesteps = (sigmas*1000) cast to int64 (truncation), sigmas appended with 0 then stored float32",
            "UniPC step i>0: corrector (UniC, bh2) first updates the incoming sample with the new model output, then the "
            "predictor runs from the corrected sample; sample_I is the predictor output (what the model sees next); "
            "order 2 predictor uses rhos_p=0.5; lower_order_final makes the last step order 1 (sigma_next=0 -> x0 prediction)",
            "FlowMatchEuler: __init__ shifts the 1000 training sigmas once; set_timesteps does linspace(sigma_max*1000, "
            "sigma_min*1000, n)/1000 where sigma_min is the ALREADY shifted 1/1000, then shifts AGAIN; timesteps float32 "
            "= sigmas*1000, sigmas appended with 0; step: x + (sigma_next - sigma) * v",
        ],
    )
    return fx


def pipeline_fixtures(pipe, out: Path) -> FixtureSet:
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    fx = FixtureSet(out, "pipeline_ref")
    height, width, num_frames, steps = 32, 48, 9, 4
    lat_shape = (1, Z_DIM, (num_frames - 1) // 4 + 1, height // 8, width // 8)
    latents = randn(lat_shape, 601)
    fx.add("latents_init", latents)
    runs = {}
    with torch.no_grad():
        pe, npe = pipe.encode_prompt(
            PIPELINE_PROMPT, NEGATIVE_PROMPT, do_classifier_free_guidance=True, max_sequence_length=MAX_SEQ_LEN, device="cpu"
        )
    fx.add("prompt_embeds", pe)
    fx.add("negative_prompt_embeds", npe)
    for sname, cls, cfg in (
        ("unipc", UniPCMultistepScheduler, UNIPC_CONFIG),
        ("flow_match_euler", FlowMatchEulerDiscreteScheduler, FLOW_MATCH_EULER_CONFIG),
    ):
        for cfg_name, gs in (("nocfg", 1.0), ("cfg", 5.0)):
            pipe.scheduler = cls(**cfg)
            key = f"{sname}_{cfg_name}"
            step_latents = []

            def cb(_pipe, i, t, kw):
                step_latents.append(kw["latents"].clone())
                return {}

            res = pipe(
                prompt=PIPELINE_PROMPT,
                negative_prompt=NEGATIVE_PROMPT if gs > 1.0 else None,
                height=height,
                width=width,
                num_frames=num_frames,
                num_inference_steps=steps,
                guidance_scale=gs,
                latents=latents.clone(),
                output_type="np",
                max_sequence_length=MAX_SEQ_LEN,
                callback_on_step_end=cb,
                callback_on_step_end_tensor_inputs=["latents"],
            )
            video = torch.from_numpy(np.asarray(res.frames)).float()
            # self-check of the documented decode path
            with torch.no_grad():
                cfg_v = pipe.vae.config
                mean = torch.tensor(cfg_v.latents_mean).view(1, Z_DIM, 1, 1, 1)
                std = torch.tensor(cfg_v.latents_std).view(1, Z_DIM, 1, 1, 1)
                z = step_latents[-1] / (1.0 / std) + mean
                x = pipe.vae.decode(z, return_dict=False)[0]
                manual = (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 4, 1)
            assert torch.allclose(manual, video, atol=1e-6), float((manual - video).abs().max())
            fx.add(f"{key}_timesteps", pipe.scheduler.timesteps.clone())
            fx.add(f"{key}_sigmas", pipe.scheduler.sigmas.clone())
            for i, sl in enumerate(step_latents):
                fx.add(f"{key}_latents_step{i}", sl)
            fx.add(f"{key}_video", video)
            vstd = float(video.std())
            assert vstd > 1e-3, (key, vstd)
            runs[key] = {
                "scheduler": sname,
                "guidance_scale": gs,
                "negative_prompt": NEGATIVE_PROMPT if gs > 1.0 else None,
                "timesteps": pipe.scheduler.timesteps.tolist(),
                "sigmas": pipe.scheduler.sigmas.tolist(),
                "video_shape": list(video.shape),
                "video_min": float(video.min()),
                "video_max": float(video.max()),
                "video_std": vstd,
                "fraction_video_at_0_or_1": float(((video <= 0) | (video >= 1)).float().mean()),
            }
    fx.meta.update(
        prompt=PIPELINE_PROMPT,
        negative_prompt=NEGATIVE_PROMPT,
        height=height,
        width=width,
        num_frames=num_frames,
        num_inference_steps=steps,
        max_sequence_length=MAX_SEQ_LEN,
        latent_shape=list(lat_shape),
        runs=runs,
        notes=[
            "latents_init is passed as `latents=` (float32); prompt_embeds/negative_prompt_embeds are what encode_prompt produced",
            "CFG only when guidance_scale > 1: noise = uncond + g * (cond - uncond), two separate transformer calls (cond first)",
            "without CFG no negative prompt is encoded",
            "latents_stepI = latents after scheduler step I (from callback_on_step_end); the last one is the final latent",
            "decode: z = latents / (1/latents_std) + latents_mean  (i.e. latents*std + mean), vae.decode (clamped to [-1,1]), "
            "video = (x/2 + 0.5).clamp(0,1) -> output_type 'np' layout [B, F, H, W, 3]",
            "timestep passed to the transformer: scheduler.timesteps[i] (int64 for UniPC, float32 for FlowMatchEuler) expanded to batch",
        ],
    )
    return fx


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    h.update(path.read_bytes())
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()
    out: Path = args.out
    set_determinism()

    import diffusers
    import tokenizers
    import transformers

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tiny = out / "tiny"

    touched = build_pipeline(tiny)
    orig_map = write_original_checkpoint(tiny, out / "tiny_wan_original.safetensors")
    sched_dir = out / "schedulers"
    sched_dir.mkdir()
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    UniPCMultistepScheduler(**UNIPC_CONFIG).save_config(str(sched_dir / "unipc"))
    FlowMatchEulerDiscreteScheduler(**FLOW_MATCH_EULER_CONFIG).save_config(str(sched_dir / "flow_match_euler"))

    pipe = load_pipeline(tiny)
    manifest = {
        "generator": "tools/parity/make_wan_fixtures.py",
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "numpy": np.__version__,
        },
        "seed": SEED,
        "dtype": "float32",
        "perturbed_constant_parameters": touched,
        "original_to_diffusers_transformer_keys": orig_map,
        "fixtures": {},
    }
    text_fx = text_encoder_fixtures(pipe, out)
    manifest["fixtures"]["text_encoder_ref"] = text_fx.write()
    manifest["fixtures"]["transformer_ref"] = transformer_fixtures(pipe, out, text_fx).write()
    vae_fx = vae_fixtures(pipe, out)
    manifest["fixtures"]["vae_ref"] = None  # written below, once the tiled decode is added
    manifest["fixtures"]["scheduler_ref"] = scheduler_fixtures(out).write()
    manifest["fixtures"]["pipeline_ref"] = pipeline_fixtures(pipe, out).write()
    # Last, so that adding it leaves every other fixture byte-identical.
    vae_tiled_fixtures(pipe, vae_fx)
    manifest["fixtures"]["vae_ref"] = vae_fx.write()

    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest["files"] = {
        str(p.relative_to(out)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in files
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {len(files) + 1} files, {total} bytes total to {out}")
    if total > SIZE_LIMIT_BYTES:
        print(f"ERROR: fixtures exceed {SIZE_LIMIT_BYTES} bytes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
