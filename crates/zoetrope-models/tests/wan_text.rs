//! Wan's text side (prompt clean-up, umT5 tokenizer, umT5 encoder, prompt embeddings) against
//! diffusers: `tests/fixtures/wan/text_encoder_ref.{json,safetensors}` and the tiny pipeline folder
//! `tests/fixtures/wan/tiny/`, made by `tools/parity/make_wan_fixtures.py`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use zoetrope_models::wan::text::{
    encode_prompts, prompt_clean, TextEncoder, Umt5Config, Umt5Encoder, WanTokenizer,
};
use zoetrope_nn::Checkpoint;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan")
}

struct Reference {
    json: serde_json::Value,
    tensors: HashMap<String, Tensor>,
}

impl Reference {
    fn load() -> Self {
        let dir = fixtures();
        let json = serde_json::from_str(
            &std::fs::read_to_string(dir.join("text_encoder_ref.json")).unwrap(),
        )
        .unwrap();
        let tensors =
            candle_core::safetensors::load(dir.join("text_encoder_ref.safetensors"), &Device::Cpu)
                .unwrap();
        Self { json, tensors }
    }

    fn strings(&self, key: &str) -> Vec<String> {
        self.json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    }

    fn prompts(&self) -> Vec<String> {
        self.strings("prompts")
    }

    fn max_len(&self) -> usize {
        self.json["max_sequence_length"].as_u64().unwrap() as usize
    }

    fn tensor(&self, name: &str) -> &Tensor {
        &self.tensors[name]
    }

    fn ids_u32(&self, name: &str) -> Vec<Vec<u32>> {
        self.tensor(name)
            .to_vec2::<i64>()
            .unwrap()
            .into_iter()
            .map(|row| row.into_iter().map(|v| v as u32).collect())
            .collect()
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    zoetrope_nn::max_abs_diff(a, b).unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    zoetrope_nn::max_abs(a).unwrap()
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn prompt_clean_matches_reference_without_ftfy() {
    let r = Reference::load();
    let prompts = r.prompts();
    let without = r.strings("cleaned_prompts_without_ftfy");
    let with = r.strings("cleaned_prompts");
    let ftfy_matters: Vec<usize> = r.json["prompts_where_ftfy_matters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(ftfy_matters, vec![2], "the fixture's known ftfy case");
    for (i, p) in prompts.iter().enumerate() {
        let cleaned = prompt_clean(p);
        assert_eq!(cleaned, without[i], "prompt {i}");
        // Where ftfy does not matter, this is also the reference's ftfy result.
        assert_eq!(cleaned == with[i], !ftfy_matters.contains(&i), "prompt {i}");
    }
}

#[test]
fn token_ids_and_masks_match_exactly() {
    let r = Reference::load();
    let tok = WanTokenizer::from_dir(&fixtures().join("tiny/tokenizer"), r.max_len()).unwrap();
    let prompts = r.prompts();
    let got = tok.encode(&as_strs(&prompts)).unwrap();
    // The reference ids were made from the ftfy-cleaned prompts. Prompt 2 is cleaned differently
    // here ("CafÃ©" is not repaired to "Café"), but the tiny vocabulary has none of Ã, © and é
    // and fuses consecutive <unk>s, so its ids are the same: equality holds for all five.
    assert_eq!(got.input_ids, r.ids_u32("input_ids"));
    assert_eq!(got.attention_mask, r.ids_u32("attention_mask"));
    let seq_lens: Vec<usize> = r.json["seq_lens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    assert_eq!(got.seq_lens, seq_lens);
    // The ftfy-cleaned spelling of prompt 2 gives the same ids too.
    let with = r.strings("cleaned_prompts");
    let ftfy_ids = tok.encode_cleaned(&[with[2].as_str()]).unwrap();
    assert_eq!(ftfy_ids.input_ids[0], got.input_ids[2]);
    // The truncated prompt keeps its final </s>.
    assert_eq!(got.input_ids[3].last(), Some(&tok.eos_id()));
}

fn tiny_encoder(dtype: DType) -> Umt5Encoder {
    Umt5Encoder::from_dir(&fixtures().join("tiny/text_encoder"), dtype, &Device::Cpu).unwrap()
}

#[test]
fn encoder_f32_matches_last_hidden_state_and_prompt_embeds() {
    let r = Reference::load();
    let enc = tiny_encoder(DType::F32);
    let ids = r.tensor("input_ids");
    let mask = r.tensor("attention_mask");

    let hidden = enc.forward(ids, Some(mask)).unwrap();
    let err = max_abs_diff(&hidden, r.tensor("last_hidden_state"));
    println!("last_hidden_state max abs err (f32): {err:e}");
    assert!(err <= 1e-4, "last_hidden_state max abs err {err}");

    let embeds = encode_prompts(&enc, ids, mask).unwrap();
    let want = r.tensor("prompt_embeds");
    let err = max_abs_diff(&embeds, want);
    println!("prompt_embeds max abs err (f32): {err:e}");
    assert!(err <= 1e-4, "prompt_embeds max abs err {err}");

    // Rows past each prompt's length are exactly zero, as in the reference.
    let got = embeds.to_vec3::<f32>().unwrap();
    let lens = r.json["seq_lens"].as_array().unwrap();
    for (b, len) in lens.iter().enumerate() {
        let len = len.as_u64().unwrap() as usize;
        for row in &got[b][len..] {
            assert!(row.iter().all(|&v| v == 0.0 && v.is_sign_positive()));
        }
        assert!(got[b][len - 1].iter().any(|&v| v != 0.0));
    }
}

#[test]
fn text_encoder_from_pipeline_folder_end_to_end() {
    let r = Reference::load();
    let te = TextEncoder::from_pipeline_dir(
        &fixtures().join("tiny"),
        DType::F32,
        &Device::Cpu,
        r.max_len(),
    )
    .unwrap();
    let embeds = te.encode(&as_strs(&r.prompts())).unwrap();
    let err = max_abs_diff(&embeds, r.tensor("prompt_embeds"));
    println!("end-to-end prompt_embeds max abs err (f32): {err:e}");
    assert!(err <= 1e-4, "prompt_embeds max abs err {err}");
}

#[test]
fn half_precision_loads_run_and_stay_close() {
    let r = Reference::load();
    let want = r.tensor("prompt_embeds");
    let scale = max_abs(want);
    for (dtype, tol) in [(DType::BF16, 0.05f32), (DType::F16, 0.01)] {
        let te = TextEncoder::from_pipeline_dir(
            &fixtures().join("tiny"),
            dtype,
            &Device::Cpu,
            r.max_len(),
        )
        .unwrap();
        let embeds = te.encode(&as_strs(&r.prompts())).unwrap();
        assert_eq!(embeds.dtype(), dtype);
        let err = max_abs_diff(&embeds, want);
        println!("{dtype:?} prompt_embeds max abs err: {err:e} (max |ref| {scale})");
        assert!(err <= tol * scale, "{dtype:?}: max abs err {err}");
    }
}

/// Copies the tiny text encoder folder with its tensors renamed (`None` drops a tensor).
fn rewritten_text_encoder(dir: &Path, rename: impl Fn(&str) -> Option<String>) -> PathBuf {
    let src = fixtures().join("tiny/text_encoder");
    let out = dir.join("text_encoder");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy(src.join("config.json"), out.join("config.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let kept: HashMap<String, Tensor> = tensors
        .into_iter()
        .filter_map(|(k, t)| rename(&k).map(|k| (k, t)))
        .collect();
    candle_core::safetensors::save(&kept, out.join("model.safetensors")).unwrap();
    out
}

#[test]
fn embedding_may_be_stored_as_embed_tokens() {
    let r = Reference::load();
    let tmp = tempfile::tempdir().unwrap();
    let dir = rewritten_text_encoder(tmp.path(), |k| {
        Some(if k == "shared.weight" {
            "encoder.embed_tokens.weight".to_string()
        } else {
            k.to_string()
        })
    });
    let enc = Umt5Encoder::from_dir(&dir, DType::F32, &Device::Cpu).unwrap();
    let embeds = encode_prompts(&enc, r.tensor("input_ids"), r.tensor("attention_mask")).unwrap();
    assert!(max_abs_diff(&embeds, r.tensor("prompt_embeds")) <= 1e-4);
}

#[test]
fn missing_tensor_error_names_file_and_key() {
    let tmp = tempfile::tempdir().unwrap();
    let key = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight";
    let dir = rewritten_text_encoder(tmp.path(), |k| (k != key).then(|| k.to_string()));
    let err = Umt5Encoder::from_dir(&dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors") && err.contains(&format!("'{key}'")),
        "{err}"
    );

    // Neither embedding name: the error says which names were tried.
    let dir = rewritten_text_encoder(tmp.path(), |k| {
        (k != "shared.weight").then(|| k.to_string())
    });
    let err = Umt5Encoder::from_dir(&dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.safetensors")
            && err.contains("'shared.weight'")
            && err.contains("encoder.embed_tokens.weight"),
        "{err}"
    );

    // A wrong shape names file, key and both shapes.
    let cfg = Umt5Config::from_file(&fixtures().join("tiny/text_encoder/config.json")).unwrap();
    let wrong = Umt5Config {
        d_ff: cfg.d_ff * 2,
        ..cfg
    };
    let vb = Checkpoint::open_dir(&fixtures().join("tiny/text_encoder"))
        .unwrap()
        .var_builder(DType::F32, &Device::Cpu);
    let err = Umt5Encoder::new(&wrong, vb).unwrap_err().to_string();
    assert!(
        err.contains("model.safetensors") && err.contains("wi_0.weight") && err.contains("128"),
        "{err}"
    );
}

#[test]
fn missing_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = TextEncoder::from_pipeline_dir(tmp.path(), DType::F32, &Device::Cpu, 32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("model_index.json"), "{err}");

    std::fs::copy(
        fixtures().join("tiny/model_index.json"),
        tmp.path().join("model_index.json"),
    )
    .unwrap();
    let err = TextEncoder::from_pipeline_dir(tmp.path(), DType::F32, &Device::Cpu, 32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tokenizer.json"), "{err}");

    let tok = tmp.path().join("tokenizer");
    std::fs::create_dir_all(&tok).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixtures().join("tiny/tokenizer").join(f), tok.join(f)).unwrap();
    }
    std::fs::create_dir_all(tmp.path().join("text_encoder")).unwrap();
    let err = TextEncoder::from_pipeline_dir(tmp.path(), DType::F32, &Device::Cpu, 32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("text_encoder") && err.contains("config.json"),
        "{err}"
    );

    std::fs::copy(
        fixtures().join("tiny/text_encoder/config.json"),
        tmp.path().join("text_encoder/config.json"),
    )
    .unwrap();
    let err = TextEncoder::from_pipeline_dir(tmp.path(), DType::F32, &Device::Cpu, 32)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("text_encoder") && err.contains(".safetensors"),
        "{err}"
    );
}
