//! Tensor names of Wan transformer checkpoints: the original Wan 2.1 / ComfyUI layout mapped to
//! the diffusers layout that [`super::transformer::WanTransformer3DModel`] loads.
//!
//! The map is diffusers 0.42.1's `convert_wan_transformer_to_diffusers`
//! (`loaders/single_file_utils.py`) for the text-to-video and image-to-video keys: strip the
//! `model.diffusion_model.` prefix, then apply a fixed list of substring replacements **in order**
//! (the order matters: `head.modulation` must win over `modulation`, and `norm2`/`norm3` are swapped
//! through a placeholder). `tests/fixtures/wan/manifest.json` →
//! `original_to_diffusers_transformer_keys` is the reference output for every T2V key.

/// Prefixes that original-layout files put in front of every key: the original Wan release and
/// ComfyUI's repackaged files use `model.diffusion_model.`; some ComfyUI exports keep only
/// `diffusion_model.`.
pub const ORIGINAL_PREFIXES: [&str; 2] = ["model.diffusion_model.", "diffusion_model."];

/// Substring replacements, applied one after the other to every key, exactly as diffusers'
/// `TRANSFORMER_KEYS_RENAME_DICT` (Python dicts keep insertion order, and the converter applies
/// every entry with `str.replace`).
const RENAMES: &[(&str, &str)] = &[
    (
        "time_embedding.0",
        "condition_embedder.time_embedder.linear_1",
    ),
    (
        "time_embedding.2",
        "condition_embedder.time_embedder.linear_2",
    ),
    (
        "text_embedding.0",
        "condition_embedder.text_embedder.linear_1",
    ),
    (
        "text_embedding.2",
        "condition_embedder.text_embedder.linear_2",
    ),
    ("time_projection.1", "condition_embedder.time_proj"),
    ("cross_attn", "attn2"),
    ("self_attn", "attn1"),
    (".o.", ".to_out.0."),
    (".q.", ".to_q."),
    (".k.", ".to_k."),
    (".v.", ".to_v."),
    (".k_img.", ".add_k_proj."),
    (".v_img.", ".add_v_proj."),
    (".norm_k_img.", ".norm_added_k."),
    ("head.modulation", "scale_shift_table"),
    ("head.head", "proj_out"),
    ("modulation", "scale_shift_table"),
    ("ffn.0", "ffn.net.0.proj"),
    ("ffn.2", "ffn.net.2"),
    // Original Wan calls the cross-attention norm `norm3` and the (weightless) FFN norm `norm2`;
    // diffusers swaps them. The converter does it through a placeholder, and so do we.
    ("norm2", "norm__placeholder"),
    ("norm3", "norm2"),
    ("norm__placeholder", "norm3"),
    // Image-to-video (CLIP image embedding); T2V checkpoints have none of these.
    ("img_emb.proj.0", "condition_embedder.image_embedder.norm1"),
    (
        "img_emb.proj.1",
        "condition_embedder.image_embedder.ff.net.0.proj",
    ),
    (
        "img_emb.proj.3",
        "condition_embedder.image_embedder.ff.net.2",
    ),
    ("img_emb.proj.4", "condition_embedder.image_embedder.norm2"),
    // VACE.
    ("before_proj", "proj_in"),
    ("after_proj", "proj_out"),
];

/// Removes an original-layout prefix (see [`ORIGINAL_PREFIXES`]), if any.
pub fn strip_prefix(key: &str) -> &str {
    ORIGINAL_PREFIXES
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .unwrap_or(key)
}

/// The diffusers name of an original-layout Wan transformer key, e.g.
/// `model.diffusion_model.blocks.3.self_attn.q.weight` → `blocks.3.attn1.to_q.weight`.
///
/// Only for original-layout keys: the map is not idempotent (it would turn diffusers' `norm2`
/// into `norm3`), so use [`is_original_layout`] to decide whether to apply it.
pub fn original_to_diffusers(key: &str) -> String {
    let mut k = strip_prefix(key).to_string();
    for (from, to) in RENAMES {
        if k.contains(from) {
            k = k.replace(from, to);
        }
    }
    k
}

/// Whether a set of transformer keys is in the original Wan layout (rather than diffusers').
/// Original files have `head.head.weight`/`time_embedding.*`; diffusers files have
/// `proj_out.weight`/`condition_embedder.*`.
pub fn is_original_layout<'a>(keys: impl IntoIterator<Item = &'a str>) -> bool {
    keys.into_iter().any(|k| {
        let k = strip_prefix(k);
        k.starts_with("head.head.")
            || k.starts_with("time_embedding.")
            || k.starts_with("text_embedding.")
            || (k.starts_with("blocks.") && k.contains(".self_attn."))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_the_t2v_keys() {
        for (orig, diff) in [
            (
                "model.diffusion_model.blocks.0.self_attn.q.weight",
                "blocks.0.attn1.to_q.weight",
            ),
            (
                "blocks.12.cross_attn.o.bias",
                "blocks.12.attn2.to_out.0.bias",
            ),
            (
                "blocks.1.cross_attn.norm_k.weight",
                "blocks.1.attn2.norm_k.weight",
            ),
            ("blocks.1.norm3.weight", "blocks.1.norm2.weight"),
            ("blocks.1.modulation", "blocks.1.scale_shift_table"),
            ("blocks.1.ffn.0.weight", "blocks.1.ffn.net.0.proj.weight"),
            ("blocks.1.ffn.2.bias", "blocks.1.ffn.net.2.bias"),
            ("head.modulation", "scale_shift_table"),
            ("head.head.weight", "proj_out.weight"),
            (
                "time_projection.1.weight",
                "condition_embedder.time_proj.weight",
            ),
            (
                "diffusion_model.text_embedding.2.bias",
                "condition_embedder.text_embedder.linear_2.bias",
            ),
            ("patch_embedding.weight", "patch_embedding.weight"),
        ] {
            assert_eq!(original_to_diffusers(orig), diff, "{orig}");
        }
    }

    #[test]
    fn tells_layouts_apart() {
        assert!(is_original_layout([
            "model.diffusion_model.head.head.weight"
        ]));
        assert!(!is_original_layout([
            "proj_out.weight",
            "condition_embedder.time_proj.weight",
            "blocks.0.attn1.to_q.weight"
        ]));
    }
}
