//! A training run's directory: `state.json` (what is being trained, how far it got),
//! `checkpoint.safetensors` (weights, optimiser moments, weight averages) and `log.jsonl` (one
//! line of metrics per logged step). Files are written to a temporary name and renamed, so a run
//! killed mid-save keeps its previous checkpoint.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Result, Tensor};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub const STATE_FILE: &str = "state.json";
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const LOG_FILE: &str = "log.jsonl";

fn io_err(path: &Path, e: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(format!("{}: {e}", path.display()))
}

/// A run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    dir: PathBuf,
}

impl RunDir {
    /// Opens `dir`, creating it if missing.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens an existing run to read from; errors naming `dir` when it holds no saved run.
    pub fn open(dir: &Path) -> Result<Self> {
        let run = Self {
            dir: dir.to_path_buf(),
        };
        if !run.has_state() {
            return Err(io_err(
                dir,
                format!("not a training run (no {STATE_FILE} and {CHECKPOINT_FILE} there)"),
            ));
        }
        Ok(run)
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// True when the run has a saved state to resume from.
    pub fn has_state(&self) -> bool {
        self.file(STATE_FILE).exists() && self.file(CHECKPOINT_FILE).exists()
    }

    fn write_atomic(&self, name: &str, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
        let tmp = self.file(&format!(".{name}.tmp"));
        write(&tmp)?;
        let dst = self.file(name);
        std::fs::rename(&tmp, &dst).map_err(|e| io_err(&dst, e))
    }

    /// Saves the state and the tensors of a checkpoint (tensors first, so a state file always
    /// refers to a complete checkpoint).
    pub fn save<S: Serialize>(&self, state: &S, tensors: &HashMap<String, Tensor>) -> Result<()> {
        self.write_atomic(CHECKPOINT_FILE, |p| {
            candle_core::safetensors::save(tensors, p)
        })?;
        let text = serde_json::to_string_pretty(state)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        self.write_atomic(STATE_FILE, |p| {
            std::fs::write(p, text).map_err(|e| io_err(p, e))
        })
    }

    /// An error when the directory already holds a run (a new run must not overwrite it).
    pub fn expect_new(&self) -> Result<()> {
        if self.has_state() {
            candle_core::bail!(
                "{} already holds a training run: pass --resume to continue it, or choose \
                 another --out directory",
                self.dir.display()
            );
        }
        Ok(())
    }

    /// An error unless a run's state says it is of `expected` kind (`found`).
    pub fn expect_kind(&self, found: &str, expected: &str) -> Result<()> {
        if found != expected {
            candle_core::bail!(
                "{} holds a {found:?} run, not a {expected:?} run",
                self.dir.display()
            );
        }
        Ok(())
    }

    /// Reads the state.
    pub fn load_state<S: DeserializeOwned>(&self) -> Result<S> {
        let path = self.file(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        serde_json::from_str(&text).map_err(|e| io_err(&path, format!("not a training state: {e}")))
    }

    /// Reads the checkpoint's tensors.
    pub fn load_tensors(&self, device: &Device) -> Result<HashMap<String, Tensor>> {
        let path = self.file(CHECKPOINT_FILE);
        candle_core::safetensors::load(&path, device).map_err(|e| io_err(&path, e))
    }

    /// Appends one JSON line to the log.
    pub fn log<S: Serialize>(&self, record: &S) -> Result<()> {
        let path = self.file(LOG_FILE);
        let line =
            serde_json::to_string(record).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        writeln!(f, "{line}").map_err(|e| io_err(&path, e))
    }
}

/// Copies the values of checkpoint tensors `<prefix><name>` into the variables of `varmap` with
/// the same names; every variable must be present.
pub fn restore_vars(
    varmap: &candle_nn::VarMap,
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    for (name, var) in data.iter() {
        let key = format!("{prefix}{name}");
        let t = tensors
            .get(&key)
            .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint has no tensor {key}")))?;
        if t.dims() != var.dims() {
            candle_core::bail!(
                "checkpoint tensor {key} has shape {:?}, the model {:?}",
                t.dims(),
                var.dims()
            );
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The variables of `varmap` as `<prefix><name>` tensors.
pub fn var_tensors(varmap: &candle_nn::VarMap, prefix: &str) -> HashMap<String, Tensor> {
    let data = varmap.data().lock().expect("varmap lock");
    data.iter()
        .map(|(n, v)| (format!("{prefix}{n}"), v.as_tensor().clone()))
        .collect()
}

/// Everything a checkpoint holds: live weights (`param.*`), optimiser moments (`adam_*`) and
/// weight averages (`ema.*`).
pub fn checkpoint_tensors(
    varmap: &candle_nn::VarMap,
    opt: &crate::optim::AdamW,
    ema: &crate::optim::Ema,
) -> HashMap<String, Tensor> {
    let mut tensors = var_tensors(varmap, "param.");
    tensors.extend(opt.state_tensors());
    tensors.extend(
        ema.tensors()
            .into_iter()
            .map(|(k, v)| (format!("ema.{k}"), v)),
    );
    tensors
}

/// The weight averages of a checkpoint, by variable name.
pub fn averages(tensors: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("ema.").map(|n| (n.to_string(), v.clone())))
        .collect()
}

/// One log line: `step`, then `fields` and `metrics` (named with `prefix`).
pub fn log_metrics(
    run: &RunDir,
    step: usize,
    fields: &[(&str, serde_json::Value)],
    prefix: &str,
    metrics: &[(&'static str, f64)],
) -> Result<()> {
    let mut rec = serde_json::Map::new();
    rec.insert("step".into(), step.into());
    for (k, v) in fields {
        rec.insert((*k).into(), v.clone());
    }
    for (k, v) in metrics {
        rec.insert(format!("{prefix}{k}"), (*v).into());
    }
    run.log(&rec)
}
