//! The installed models, by the name the API's `model` field uses: `zoetrope-world` (built in)
//! and any model folders given with `--model NAME=DIR` or found under `--model-dir`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zoetrope_engine::{LoadOptions, Model, ModelInfo, ModelSource};

use crate::ServerError;

/// The built-in world model's name.
pub const BUILTIN: &str = "zoetrope-world";

pub struct Installed {
    pub name: String,
    pub model: Arc<Model>,
    pub info: ModelInfo,
    /// Unix seconds the model was loaded (the `created` of `/v1/models`).
    pub loaded_at: i64,
}

pub struct Models {
    list: Vec<Installed>,
}

impl Models {
    /// Loads the models: the built-in one first (the default), then `named` in order, then
    /// every model folder directly under each of `dirs` (named by its folder).
    pub fn load(
        builtin: bool,
        named: &[(String, PathBuf)],
        dirs: &[PathBuf],
        opts: &LoadOptions,
    ) -> Result<Self, ServerError> {
        let mut sources: Vec<(String, ModelSource)> = Vec::new();
        if builtin {
            sources.push((BUILTIN.to_string(), ModelSource::Builtin));
        }
        for (name, dir) in named {
            sources.push((name.clone(), ModelSource::Dir(dir.clone())));
        }
        for dir in dirs {
            let entries = std::fs::read_dir(dir).map_err(|e| {
                ServerError::Config(format!("cannot read the model dir {}: {e}", dir.display()))
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| zoetrope_engine::family_of(p).is_ok())
                .collect();
            found.sort();
            for p in found {
                let name = p
                    .file_name()
                    .unwrap_or_default()
                    .to_string_lossy()
                    .to_string();
                sources.push((name, ModelSource::Dir(p)));
            }
        }
        let mut list: Vec<Installed> = Vec::new();
        for (name, source) in sources {
            check_name(&name)?;
            if list.iter().any(|m| m.name == name) {
                return Err(ServerError::Config(format!(
                    "two models are named '{name}': give one another name with --model NAME=DIR"
                )));
            }
            let model = Model::load(&source, opts).map_err(|e| {
                let what = match &source {
                    ModelSource::Builtin => "the built-in model".to_string(),
                    ModelSource::Dir(d) => d.display().to_string(),
                };
                ServerError::Config(format!("cannot load model '{name}' from {what}: {e}"))
            })?;
            let info = model.info();
            list.push(Installed {
                name,
                model: Arc::new(model),
                info,
                loaded_at: crate::db::now_ms() / 1000,
            });
        }
        if list.is_empty() {
            return Err(ServerError::Config(
                "no models: drop --no-builtin or give --model NAME=DIR / --model-dir DIR".into(),
            ));
        }
        Ok(Self { list })
    }

    /// The model a request names (`None`: the first installed).
    pub fn get(&self, name: Option<&str>) -> Option<&Installed> {
        match name {
            None => self.list.first(),
            Some(n) => self.list.iter().find(|m| m.name == n),
        }
    }

    pub fn names(&self) -> Vec<&str> {
        self.list.iter().map(|m| m.name.as_str()).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Installed> {
        self.list.iter()
    }
}

/// Model names go into URLs and JSON: letters, digits, `-`, `_`, `.`.
fn check_name(name: &str) -> Result<(), ServerError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ServerError::Config(format!(
            "'{name}' cannot name a model: use up to 64 letters, digits, '-', '_' or '.'"
        )))
    }
}

/// Parses `NAME=DIR`.
pub fn parse_named(s: &str) -> Result<(String, PathBuf), String> {
    match s.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok((name.to_string(), Path::new(dir).to_path_buf()))
        }
        _ => Err(format!(
            "'{s}' is not NAME=DIR (e.g. wan-1.3b=/models/Wan2.1-T2V-1.3B-Diffusers)"
        )),
    }
}
