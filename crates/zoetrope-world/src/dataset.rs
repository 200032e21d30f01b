//! Training data: rendered clips with a JSON-lines manifest of their captions and scenes.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::caption::describe;
use crate::render::{render, RenderOptions};
use crate::scene::Scene;
use crate::spec::SceneSpec;
use crate::WorldError;

/// The manifest's file name inside a dataset folder.
pub const MANIFEST: &str = "manifest.jsonl";

/// Mixed into a clip's seed for its caption, so that caption wording and scene layout draw on
/// unrelated random streams.
const CAPTION_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// One line of `manifest.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// The clip's file name, relative to the manifest.
    pub file: String,
    pub seed: u64,
    pub caption: String,
    pub spec: SceneSpec,
    pub scene: Scene,
    pub width: u32,
    pub height: u32,
    pub frames: usize,
    pub fps: f64,
}

/// The scene and caption of the clip with this seed.
pub fn sample_clip(seed: u64) -> (Scene, String) {
    caption_scene(Scene::sample(seed), seed)
}

/// The scene and caption of the training clip with this seed: as [`sample_clip`], but the scene
/// holds no held-out combination ([`crate::heldout`]), so the held-out prompts stay unseen.
pub fn sample_training_clip(seed: u64) -> (Scene, String) {
    caption_scene(Scene::sample_training(seed), seed)
}

fn caption_scene(scene: Scene, seed: u64) -> (Scene, String) {
    let caption = describe(
        &scene.spec,
        &mut ChaCha8Rng::seed_from_u64(seed ^ CAPTION_SALT),
    );
    (scene, caption)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> WorldError + '_ {
    move |source| WorldError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `count` clips `clip_00000.<ext>`, … with seeds `first_seed`, `first_seed + 1`, … into
/// `dir` (created if missing), and `manifest.jsonl` describing them. The format follows `ext`
/// (e.g. "mp4", "y4m", "gif"). Calls `progress` with the number of clips written so far.
pub fn write_dataset(
    dir: &Path,
    count: usize,
    first_seed: u64,
    opts: &RenderOptions,
    ext: &str,
    progress: &mut dyn FnMut(usize),
) -> Result<(), WorldError> {
    write_dataset_from(dir, count, first_seed, opts, ext, sample_clip, progress)
}

/// [`write_dataset`] with the clip of each seed drawn by `clip`, e.g. [`sample_training_clip`].
pub fn write_dataset_from(
    dir: &Path,
    count: usize,
    first_seed: u64,
    opts: &RenderOptions,
    ext: &str,
    clip: fn(u64) -> (Scene, String),
    progress: &mut dyn FnMut(usize),
) -> Result<(), WorldError> {
    opts.validate()?;
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    let manifest_path = dir.join(MANIFEST);
    let file = File::create(&manifest_path).map_err(io_error(&manifest_path))?;
    let mut manifest = BufWriter::new(file);
    let ext = ext.trim_start_matches('.');
    for i in 0..count {
        let seed = first_seed.wrapping_add(i as u64);
        let (scene, caption) = clip(seed);
        let video = render(&scene, opts)?;
        let name = format!("clip_{i:05}.{ext}");
        zoetrope_video::write_video(&dir.join(&name), &video)?;
        let entry = ManifestEntry {
            file: name,
            seed,
            caption,
            spec: scene.spec.clone(),
            scene,
            width: opts.width,
            height: opts.height,
            frames: opts.frames,
            fps: opts.fps,
        };
        let line = serde_json::to_string(&entry).map_err(|source| WorldError::Json {
            path: manifest_path.clone(),
            source,
        })?;
        writeln!(manifest, "{line}").map_err(io_error(&manifest_path))?;
        progress(i + 1);
    }
    manifest.flush().map_err(io_error(&manifest_path))?;
    Ok(())
}

/// Reads a manifest written by [`write_dataset`]; `file` names stay relative to its folder.
pub fn read_manifest(path: &Path) -> Result<Vec<ManifestEntry>, WorldError> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut out = vec![];
    for (n, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io_error(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let entry = serde_json::from_str(&line).map_err(|source| WorldError::Json {
            path: PathBuf::from(format!("{}:{}", path.display(), n + 1)),
            source,
        })?;
        out.push(entry);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caption::parse;

    #[test]
    fn writes_clips_and_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let opts = RenderOptions {
            width: 32,
            height: 24,
            frames: 4,
            fps: 8.0,
        };
        let mut seen = vec![];
        write_dataset(dir.path(), 3, 100, &opts, "y4m", &mut |n| seen.push(n)).unwrap();
        assert_eq!(seen, [1, 2, 3]);
        let entries = read_manifest(&dir.path().join(MANIFEST)).unwrap();
        assert_eq!(entries.len(), 3);
        for (i, e) in entries.iter().enumerate() {
            assert_eq!(e.file, format!("clip_{i:05}.y4m"));
            assert_eq!(e.seed, 100 + i as u64);
            assert!(dir.path().join(&e.file).is_file());
            assert_eq!(e.spec, e.scene.spec);
            assert!(parse(&e.caption).unwrap().matches(&e.spec), "{}", e.caption);
            let video = zoetrope_video::read_video(&dir.path().join(&e.file)).unwrap();
            assert_eq!((video.width(), video.height(), video.len()), (32, 24, 4));
        }
        // Same seeds, same data.
        let again = tempfile::tempdir().unwrap();
        write_dataset(again.path(), 3, 100, &opts, "y4m", &mut |_| {}).unwrap();
        assert_eq!(
            read_manifest(&again.path().join(MANIFEST)).unwrap(),
            entries
        );
    }

    #[test]
    fn training_datasets_hold_nothing_out() {
        let dir = tempfile::tempdir().unwrap();
        let opts = RenderOptions {
            width: 16,
            height: 16,
            frames: 1,
            fps: 8.0,
        };
        let clip = sample_training_clip;
        write_dataset_from(dir.path(), 40, 0, &opts, "y4m", clip, &mut |_| {}).unwrap();
        let entries = read_manifest(&dir.path().join(MANIFEST)).unwrap();
        assert_eq!(entries.len(), 40);
        for e in &entries {
            assert!(!crate::heldout::spec_is_held_out(&e.spec), "{}", e.caption);
            assert_eq!(
                (e.scene.clone(), e.caption.clone()),
                sample_training_clip(e.seed)
            );
        }
        // Some of these seeds hold something out in the unfiltered sampler.
        assert!((0..40).any(|s| crate::heldout::spec_is_held_out(&sample_clip(s).0.spec)));
    }

    #[test]
    fn bad_options_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let opts = RenderOptions {
            width: 8,
            height: 24,
            frames: 4,
            fps: 8.0,
        };
        let err = write_dataset(dir.path(), 1, 0, &opts, "y4m", &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("width"));
        assert!(!dir.path().join(MANIFEST).exists());
    }
}
