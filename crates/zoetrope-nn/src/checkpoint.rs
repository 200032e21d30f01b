//! Checkpoint loading: memory-mapped safetensors (single files or diffusers' sharded index), key
//! remapping for checkpoints that use other names, and errors that name the file and the tensor.
//!
//! Weights stay in their stored dtype unless a model asks for another (the [`VarBuilder`]'s dtype):
//! Wan, for one, keeps its modulation tables in f32 while the rest is bf16.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

/// What can go wrong opening a checkpoint or reading a tensor from it.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{}: cannot read checkpoint: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error("{}: tensor '{key}' is missing; the model needs it (is this the right checkpoint for this model?)", files_list(files))]
    Missing { files: Vec<PathBuf>, key: String },
    #[error("{}: tensor '{key}' has shape {found:?}, but the model expects {expected:?} (does the config match the weights?)", path.display())]
    Shape {
        path: PathBuf,
        key: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{}: tensor '{key}' cannot be loaded: {reason}", path.display())]
    Tensor {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("{}: {reason}", path.display())]
    Index { path: PathBuf, reason: String },
}

fn files_list(files: &[PathBuf]) -> String {
    match files {
        [one] => one.display().to_string(),
        many => format!(
            "{} (and {} more shards)",
            many[0].display(),
            many.len().saturating_sub(1)
        ),
    }
}

impl From<CheckpointError> for candle_core::Error {
    fn from(e: CheckpointError) -> Self {
        candle_core::Error::Msg(e.to_string())
    }
}

/// A set of safetensors files read as one name space.
pub struct Checkpoint {
    files: Vec<PathBuf>,
    shards: Vec<MmapedSafetensors>,
    /// Stored key → shard index.
    routing: HashMap<String, usize>,
    /// Name the model asks for → stored key, for checkpoints with other key names.
    renames: HashMap<String, String>,
    /// Stored keys that were renamed, so their old names no longer resolve.
    renamed_away: std::collections::HashSet<String>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("files", &self.files)
            .field("tensors", &self.routing.len())
            .finish()
    }
}

impl Checkpoint {
    /// Memory-maps one or more safetensors files.
    pub fn open<P: AsRef<Path>>(paths: &[P]) -> Result<Self, CheckpointError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut shards = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let path = p.as_ref().to_path_buf();
            if !path.is_file() {
                return Err(CheckpointError::Open {
                    path,
                    reason: "no such file".into(),
                });
            }
            // SAFETY: the file is mapped read-only; as with every mmap-based loader, it must not
            // be truncated while zoetrope runs.
            let st =
                unsafe { MmapedSafetensors::new(&path) }.map_err(|e| CheckpointError::Open {
                    path: path.clone(),
                    reason: format!("not a valid safetensors file ({e})"),
                })?;
            for (name, _) in st.tensors() {
                routing.insert(name, i);
            }
            files.push(path);
            shards.push(st);
        }
        Ok(Self {
            files,
            shards,
            routing,
            renames: HashMap::new(),
            renamed_away: Default::default(),
        })
    }

    /// Opens a model's weights in a folder: a single `*.safetensors`, or the shards listed by a
    /// `*.safetensors.index.json` (diffusers/transformers sharding).
    pub fn open_dir(dir: &Path) -> Result<Self, CheckpointError> {
        let entries = std::fs::read_dir(dir).map_err(|e| CheckpointError::Open {
            path: dir.to_path_buf(),
            reason: e.to_string(),
        })?;
        let mut singles = Vec::new();
        let mut indexes = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".safetensors.index.json") {
                indexes.push(entry.path());
            } else if name.ends_with(".safetensors") {
                singles.push(entry.path());
            }
        }
        indexes.sort();
        singles.sort();
        if let Some(index) = indexes.first() {
            return Self::open_index(index);
        }
        match singles.as_slice() {
            [] => Err(CheckpointError::Open {
                path: dir.to_path_buf(),
                reason: "no .safetensors weights in this folder".into(),
            }),
            [one] => Self::open(&[one]),
            many => Err(CheckpointError::Open {
                path: dir.to_path_buf(),
                reason: format!(
                    "{} .safetensors files but no *.safetensors.index.json saying how they fit together",
                    many.len()
                ),
            }),
        }
    }

    /// Opens the shards listed in a `weight_map` index file.
    pub fn open_index(index: &Path) -> Result<Self, CheckpointError> {
        let err = |reason: String| CheckpointError::Index {
            path: index.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(index).map_err(|e| err(e.to_string()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| err("no \"weight_map\" object".into()))?;
        let mut shard_names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        shard_names.sort_unstable();
        shard_names.dedup();
        let dir = index.parent().unwrap_or(Path::new("."));
        let paths: Vec<PathBuf> = shard_names.iter().map(|n| dir.join(n)).collect();
        let ckpt = Self::open(&paths)?;
        for (key, shard) in map {
            if !ckpt.routing.contains_key(key) {
                return Err(err(format!(
                    "lists tensor '{key}' in {} but that shard does not hold it",
                    shard.as_str().unwrap_or("?")
                )));
            }
        }
        Ok(ckpt)
    }

    /// Applies a key map: `map(stored_key)` gives the name the model uses, or `None` to keep the
    /// stored name. Used for checkpoints saved with another project's names.
    pub fn with_key_map(mut self, map: impl Fn(&str) -> Option<String>) -> Self {
        self.renames = self
            .routing
            .keys()
            .filter_map(|k| map(k).map(|new| (new, k.clone())))
            .collect();
        self.renamed_away = self.renames.values().cloned().collect();
        self
    }

    /// The files this checkpoint reads.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Names the model can ask for (after renaming), sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .routing
            .keys()
            .filter(|k| !self.renamed_away.contains(*k))
            .cloned()
            .chain(self.renames.keys().cloned())
            .collect();
        keys.sort();
        keys
    }

    /// The stored key for a model name: renamed keys answer only to their new name.
    fn stored_key<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        match self.renames.get(name) {
            Some(stored) => Some(stored),
            None if self.renamed_away.contains(name) => None,
            None => self.routing.contains_key(name).then_some(name),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.stored_key(name).is_some()
    }

    /// The stored dtype of a tensor.
    pub fn dtype(&self, name: &str) -> Result<DType, CheckpointError> {
        let (path, _) = self.view(name)?;
        let key = self.stored_key(name).expect("view found it");
        let view = self.shards[self.routing[key]]
            .get(key)
            .map_err(|e| e.to_string());
        view.and_then(|v| DType::try_from(v.dtype()).map_err(|e| e.to_string()))
            .map_err(|reason| CheckpointError::Tensor {
                path: path.to_path_buf(),
                key: name.to_string(),
                reason,
            })
    }

    /// The file holding `name` and its stored shape.
    fn view(&self, name: &str) -> Result<(&Path, Vec<usize>), CheckpointError> {
        let Some((key, &i)) = self
            .stored_key(name)
            .and_then(|k| self.routing.get(k).map(|i| (k, i)))
        else {
            return Err(CheckpointError::Missing {
                files: self.files.clone(),
                key: name.to_string(),
            });
        };
        let view = self.shards[i]
            .get(key)
            .map_err(|e| CheckpointError::Tensor {
                path: self.files[i].clone(),
                key: name.to_string(),
                reason: e.to_string(),
            })?;
        Ok((&self.files[i], view.shape().to_vec()))
    }

    /// Loads a tensor in its stored dtype.
    pub fn load(&self, name: &str, device: &Device) -> Result<Tensor, CheckpointError> {
        let (path, _) = self.view(name)?;
        let key = self.stored_key(name).expect("view found it");
        let i = self.routing[key];
        self.shards[i]
            .load(key, device)
            .map_err(|e| CheckpointError::Tensor {
                path: path.to_path_buf(),
                key: name.to_string(),
                reason: e.to_string(),
            })
    }

    /// Loads a tensor, checking its shape.
    pub fn load_shaped(
        &self,
        name: &str,
        shape: &Shape,
        device: &Device,
    ) -> Result<Tensor, CheckpointError> {
        let (path, found) = self.view(name)?;
        if found != shape.dims() {
            return Err(CheckpointError::Shape {
                path: path.to_path_buf(),
                key: name.to_string(),
                found,
                expected: shape.dims().to_vec(),
            });
        }
        self.load(name, device)
    }

    /// A candle `VarBuilder` over this checkpoint. `dtype` is what layers get by default; use
    /// `vb.to_dtype(DType::F32)` for parts a model keeps in f32.
    pub fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }
}

impl SimpleBackend for Checkpoint {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _init: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load_shaped(name, &s, dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, tensors: &[(&str, Tensor)]) {
        let map: HashMap<String, Tensor> = tensors
            .iter()
            .map(|(k, t)| (k.to_string(), t.clone()))
            .collect();
        candle_core::safetensors::save(&map, path).unwrap();
    }

    #[test]
    fn loads_checks_shapes_and_names_file_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let dev = Device::Cpu;
        write(
            &path,
            &[(
                "a.weight",
                Tensor::arange(0f32, 6., &dev)
                    .unwrap()
                    .reshape((2, 3))
                    .unwrap(),
            )],
        );
        let vb = Checkpoint::open(&[&path])
            .unwrap()
            .var_builder(DType::F32, &dev);
        let a = vb.pp("a").get((2, 3), "weight").unwrap();
        assert_eq!(a.to_vec2::<f32>().unwrap()[1], vec![3., 4., 5.]);

        let err = vb.pp("a").get((3, 2), "weight").unwrap_err().to_string();
        assert!(
            err.contains("w.safetensors") && err.contains("'a.weight'"),
            "{err}"
        );
        assert!(err.contains("[2, 3]") && err.contains("[3, 2]"), "{err}");

        let err = vb.get((1,), "b.bias").unwrap_err().to_string();
        assert!(
            err.contains("w.safetensors") && err.contains("'b.bias'") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn keeps_stored_dtype_until_asked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let dev = Device::Cpu;
        let t = Tensor::ones((2,), DType::BF16, &dev).unwrap();
        write(&path, &[("x", t)]);
        let ckpt = Checkpoint::open(&[&path]).unwrap();
        assert_eq!(ckpt.dtype("x").unwrap(), DType::BF16);
        assert_eq!(ckpt.load("x", &dev).unwrap().dtype(), DType::BF16);
        let vb = ckpt.var_builder(DType::F32, &dev);
        assert_eq!(vb.get(2, "x").unwrap().dtype(), DType::F32);
    }

    #[test]
    fn renames_and_shards() {
        let dir = tempfile::tempdir().unwrap();
        let dev = Device::Cpu;
        let one = Tensor::ones((1,), DType::F32, &dev).unwrap();
        write(
            &dir.path().join("m-1.safetensors"),
            &[("model.q", one.clone())],
        );
        write(
            &dir.path().join("m-2.safetensors"),
            &[("model.k", one.clone())],
        );
        std::fs::write(
            dir.path().join("m.safetensors.index.json"),
            r#"{"metadata": {}, "weight_map": {"model.q": "m-1.safetensors", "model.k": "m-2.safetensors"}}"#,
        )
        .unwrap();
        let ckpt = Checkpoint::open_dir(dir.path())
            .unwrap()
            .with_key_map(|k| k.strip_prefix("model.").map(|s| format!("attn.to_{s}")));
        assert_eq!(ckpt.keys(), vec!["attn.to_k", "attn.to_q"]);
        assert!(ckpt.contains("attn.to_q") && !ckpt.contains("model.q"));
        let err = ckpt.load("attn.to_v", &dev).unwrap_err().to_string();
        assert!(
            err.contains("m-1.safetensors") && err.contains("1 more shard"),
            "{err}"
        );

        std::fs::write(dir.path().join("bad.safetensors"), b"garbage").unwrap();
        let err = Checkpoint::open(&[dir.path().join("bad.safetensors")])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.safetensors") && err.contains("not a valid safetensors"),
            "{err}"
        );
    }
}
