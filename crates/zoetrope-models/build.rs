//! Embeds the built-in world model when its files are present: sets `zoetrope_builtin_world`
//! when both `weights/world/model.json` and `weights/world/model.safetensors` exist, which makes
//! `world::builtin()` include them in the binary.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(zoetrope_builtin_world)");
    let dir = Path::new("weights/world");
    let files = [dir.join("model.json"), dir.join("model.safetensors")];
    // Watch only paths that exist: Cargo treats a missing watched path as changed on every
    // build. The directory's own timestamp changes when the files are added or removed; without
    // the directory, watch the nearest folder that exists.
    let watched = [dir, Path::new("weights"), Path::new(".")]
        .into_iter()
        .find(|p| p.is_dir())
        .expect("the package directory exists");
    println!("cargo::rerun-if-changed={}", watched.display());
    for f in files.iter().filter(|f| f.is_file()) {
        println!("cargo::rerun-if-changed={}", f.display());
    }
    if files.iter().all(|f| f.is_file()) {
        println!("cargo::rustc-cfg=zoetrope_builtin_world");
    }
}
