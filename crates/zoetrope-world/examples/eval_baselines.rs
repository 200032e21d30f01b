//! The evaluator side by side on ground truth and on videos that are wrong in known ways, over the
//! same seeds, printed as a Markdown table (the README's evaluator table comes from here).
//!
//! cargo run --profile ci -p zoetrope-world --example eval_baselines -- [CLIPS] [WxH] [FRAMES] [FPS]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use zoetrope_video::{read_video, write_video, Frame, Video};
use zoetrope_world::{
    dataset::sample_clip, evaluate, parse, render, summarize, Colour, EvalReport, Motion,
    RenderOptions, Scene, SceneSpec, Side,
};

fn opposite_motion(m: Motion) -> Motion {
    use zoetrope_world::Direction::*;
    match m {
        Motion::Still => Motion::Slide(Right),
        Motion::Fall => Motion::Still,
        Motion::Bounce(Side::Left) => Motion::Bounce(Side::Right),
        Motion::Bounce(Side::Right) => Motion::Bounce(Side::Left),
        Motion::Slide(d) => Motion::Slide(match d {
            Right => Left,
            Left => Right,
            Up => Down,
            Down => Up,
            UpRight => DownLeft,
            DownLeft => UpRight,
            UpLeft => DownRight,
            DownRight => UpLeft,
        }),
    }
}

/// Every object recoloured to a palette colour that the scene does not use.
fn recoloured(spec: &SceneSpec) -> SceneSpec {
    let mut out = spec.clone();
    let used: Vec<Colour> = std::iter::once(spec.background)
        .chain(spec.objects.iter().map(|o| o.colour))
        .collect();
    let mut free = Colour::ALL.iter().copied().filter(|c| !used.contains(c));
    for o in &mut out.objects {
        o.colour = free.next().expect("11 colours cover 4 uses");
    }
    out
}

fn rerender(spec: &SceneSpec, seed: u64, opts: &RenderOptions) -> Video {
    render(&Scene::from_spec(spec, seed).expect("valid spec"), opts).expect("valid options")
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let clips: u64 = args
        .first()
        .map_or(100, |s| s.parse().expect("CLIPS is a number"));
    let (w, h) = args.get(1).map_or((128, 128), |s| {
        let (w, h) = s.split_once('x').expect("size is WxH");
        (w.parse().unwrap(), h.parse().unwrap())
    });
    let frames = args.get(2).map_or(33, |s| s.parse().unwrap());
    let fps = args.get(3).map_or(16.0, |s| s.parse().unwrap());
    let opts = RenderOptions {
        width: w,
        height: h,
        frames,
        fps,
    };

    let columns = [
        "ground truth",
        "ground truth via MP4",
        "blank",
        "noise",
        "wrong colours",
        "wrong motions",
    ];
    let mut reports: Vec<Vec<EvalReport>> = vec![Vec::new(); columns.len()];
    let tmp = std::env::temp_dir().join(format!("zoetrope-eval-{}.mp4", std::process::id()));
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // Seeds far from the small ones the tests use.
    for seed in 10_000..10_000 + clips {
        let (scene, caption) = sample_clip(seed);
        let query = parse(&caption).expect("own captions parse");
        let truth = render(&scene, &opts).expect("valid options");
        write_video(&tmp, &truth).expect("mp4 writes");
        let via_mp4 = read_video(&tmp).expect("mp4 reads");
        let blank = Video::new(
            vec![Frame::filled(w, h, scene.spec.background.rgb()); frames],
            fps,
        )
        .unwrap();
        let noise = Video::new(
            (0..frames)
                .map(|_| {
                    let data = (0..w as usize * h as usize * 3)
                        .map(|_| rng.random())
                        .collect();
                    Frame::from_rgb(w, h, data).unwrap()
                })
                .collect(),
            fps,
        )
        .unwrap();
        let wrong_colour = rerender(&recoloured(&scene.spec), seed, &opts);
        let mut moved = scene.spec.clone();
        for o in &mut moved.objects {
            o.motion = opposite_motion(o.motion);
        }
        let wrong_motion = rerender(&moved, seed, &opts);
        for (col, video) in [truth, via_mp4, blank, noise, wrong_colour, wrong_motion]
            .iter()
            .enumerate()
        {
            reports[col].push(evaluate(video, &query));
        }
    }
    let _ = std::fs::remove_file(&tmp);

    let summaries: Vec<_> = reports.iter().map(|r| summarize(r)).collect();
    println!(
        "{clips} clips, {w}x{h}, {frames} frames at {fps} fps; mean score of each check (seeds 10000..{})\n",
        10_000 + clips
    );
    println!("| check | {} |", columns.join(" | "));
    println!("|---|{}", "---:|".repeat(columns.len()));
    for check in &summaries[0].checks {
        let cells: Vec<String> = summaries
            .iter()
            .map(|s| {
                s.checks
                    .iter()
                    .find(|c| c.name == check.name)
                    .map_or("–".into(), |c| format!("{:.1}%", 100.0 * c.mean_score))
            })
            .collect();
        println!("| {} | {} |", check.name, cells.join(" | "));
    }
    let totals: Vec<String> = summaries
        .iter()
        .map(|s| format!("**{:.1}%**", 100.0 * s.mean_total))
        .collect();
    println!("| **total** | {} |", totals.join(" | "));
}
