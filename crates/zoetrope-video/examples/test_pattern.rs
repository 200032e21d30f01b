//! Writes the moving test pattern to a file in any supported format.
//!
//! ```text
//! cargo run -p zoetrope-video --example test_pattern -- OUT [WIDTH HEIGHT FRAMES FPS]
//! ```
//! Defaults: 96x64, 48 frames, 16 fps. The format follows OUT's extension.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: test_pattern OUT [WIDTH HEIGHT FRAMES FPS]";
    let Some(out) = args.first().map(PathBuf::from) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let num = |i: usize, default: f64| -> Result<f64, String> {
        match args.get(i) {
            None => Ok(default),
            Some(s) => s
                .parse::<f64>()
                .map_err(|_| format!("argument {i} ({s:?}) is not a number; {usage}")),
        }
    };
    let parsed = (|| -> Result<_, String> {
        Ok((num(1, 96.0)?, num(2, 64.0)?, num(3, 48.0)?, num(4, 16.0)?))
    })();
    let (w, h, frames, fps) = match parsed {
        Ok(v) => v,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let result =
        zoetrope_video::pattern::moving_test_pattern(w as u32, h as u32, frames as usize, fps)
            .and_then(|video| zoetrope_video::write_video(&out, &video).map(|()| video));
    match result {
        Ok(video) => {
            println!(
                "wrote {} ({}x{}, {} frames, {} fps, {:.3} s)",
                out.display(),
                video.width(),
                video.height(),
                video.len(),
                video.fps(),
                video.duration()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
