//! What a request asks for. The API reads a request's fields (JSON or multipart, the way the
//! `openai` SDK sends them), builds a [`JobSpec`], checks it against the model through the
//! engine (so a bad size is a 400 naming the allowed ones, before anything is queued), and
//! stores it as JSON; the worker turns the stored spec back into an engine [`Job`].
//!
//! The OpenAI fields: `prompt`, `model`, `seconds`, `size`, `input_reference` (an image file,
//! or `{"image_url": "data:…"}`). zoetrope's own, all optional: `mode` (`text`, `image`,
//! `loop`, `extend`, `extend_backward`, `connect`, `edit`), `video_id` (the clip that extend /
//! connect / edit start from; `video[id]` or an uploaded `video` file on the SDK's
//! `/videos/edits` and `/videos/extensions`), `second_video_id` (connect's second clip),
//! `strength` (edit), `seed`, `steps`, `guidance`, `negative_prompt`, `fps`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zoetrope_engine::{Job, Mode, ModelInfo};
use zoetrope_video::{Frame, Video};

/// An uploaded input, or a finished video of the same key.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum InputVideo {
    /// A file in the job's own folder.
    Upload { file: String },
    /// The output of the completed video `id`.
    Video { id: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModeSpec {
    Text,
    Image {
        image: String,
    },
    Loop {
        image: Option<String>,
    },
    Extend {
        video: InputVideo,
        backward: bool,
    },
    Connect {
        first: InputVideo,
        second: InputVideo,
    },
    Edit {
        video: InputVideo,
        strength: Option<f64>,
    },
}

/// A job as stored in the queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: String,
    pub size: Option<(usize, usize)>,
    pub frames: Option<usize>,
    pub fps: Option<f64>,
    pub steps: Option<usize>,
    pub guidance: Option<f64>,
    pub seed: u64,
    pub mode: ModeSpec,
}

/// Why a request cannot be taken: the message says what to send instead; `param` names the
/// field (OpenAI's error `param`).
#[derive(Debug, Clone, PartialEq)]
pub struct BadRequest {
    pub message: String,
    pub param: Option<String>,
}

impl BadRequest {
    pub fn new(param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            param: param.map(str::to_string),
        }
    }
}

type Bad<T> = Result<T, BadRequest>;

/// One field of a request.
#[derive(Clone, Debug)]
pub enum Field {
    Text(String),
    /// A JSON number or boolean: fine where a number is wanted, not where text is.
    Scalar(String),
    File {
        name: Option<String>,
        content_type: Option<String>,
        bytes: Vec<u8>,
    },
}

/// A request's fields by name, nested JSON objects flattened the way multipart forms spell
/// them (`video[id]`).
#[derive(Clone, Debug, Default)]
pub struct Fields(pub BTreeMap<String, Field>);

impl Fields {
    /// From a JSON object body.
    pub fn from_json(value: serde_json::Value) -> Bad<Self> {
        let serde_json::Value::Object(map) = value else {
            return Err(BadRequest::new(
                None,
                "the request body must be a JSON object",
            ));
        };
        let mut out = BTreeMap::new();
        for (k, v) in map {
            flatten(&k, v, &mut out, 0)?;
        }
        Ok(Self(out))
    }

    pub fn text(&self, name: &str) -> Bad<Option<&str>> {
        match self.0.get(name) {
            None => Ok(None),
            Some(Field::Text(s)) => Ok(Some(s)),
            Some(Field::Scalar(_)) => Err(BadRequest::new(
                Some(name),
                format!("'{name}' must be a string"),
            )),
            Some(Field::File { .. }) => Err(BadRequest::new(
                Some(name),
                format!("'{name}' must be a text field, not a file"),
            )),
        }
    }

    /// A field that may be a string or a JSON number/boolean (multipart sends only strings).
    pub fn scalar(&self, name: &str) -> Bad<Option<&str>> {
        match self.0.get(name) {
            Some(Field::Scalar(s)) => Ok(Some(s)),
            _ => self.text(name),
        }
    }

    fn number<T: std::str::FromStr>(&self, name: &str, what: &str) -> Bad<Option<T>> {
        match self.scalar(name)? {
            None => Ok(None),
            Some(s) => s.trim().parse().map(Some).map_err(|_| {
                BadRequest::new(Some(name), format!("'{name}' must be {what}, got '{s}'"))
            }),
        }
    }

    pub fn file(&self, name: &str) -> Option<(&Option<String>, &[u8])> {
        match self.0.get(name) {
            Some(Field::File { name, bytes, .. }) => Some((name, bytes)),
            _ => None,
        }
    }

    /// Rejects fields this endpoint does not know (a typo should not be silently ignored).
    pub fn only(&self, allowed: &[&str]) -> Bad<()> {
        for k in self.0.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(BadRequest::new(
                    Some(k),
                    format!(
                        "unknown field '{k}'; this endpoint takes: {}",
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn flatten(
    key: &str,
    v: serde_json::Value,
    out: &mut BTreeMap<String, Field>,
    depth: usize,
) -> Bad<()> {
    use serde_json::Value;
    if depth > 2 {
        return Err(BadRequest::new(
            Some(key),
            format!("'{key}' is nested too deeply"),
        ));
    }
    match v {
        Value::Null => {}
        Value::String(s) => {
            out.insert(key.to_string(), Field::Text(s));
        }
        Value::Number(n) => {
            out.insert(key.to_string(), Field::Scalar(n.to_string()));
        }
        Value::Bool(b) => {
            out.insert(key.to_string(), Field::Scalar(b.to_string()));
        }
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{key}[{k}]"), v, out, depth + 1)?;
            }
        }
        Value::Array(_) => {
            return Err(BadRequest::new(
                Some(key),
                format!("'{key}' must not be a list"),
            ));
        }
    }
    Ok(())
}

pub const CREATE_FIELDS: &[&str] = &[
    "prompt",
    "model",
    "seconds",
    "size",
    "input_reference",
    "input_reference[image_url]",
    "input_reference[file_id]",
    "mode",
    "video_id",
    "video[id]",
    "second_video_id",
    "strength",
    "seed",
    "steps",
    "guidance",
    "negative_prompt",
    "fps",
];
pub const EDIT_FIELDS: &[&str] = &[
    "prompt",
    "video",
    "video[id]",
    "model",
    "size",
    "strength",
    "seed",
    "steps",
    "guidance",
    "negative_prompt",
];
pub const EXTEND_FIELDS: &[&str] = &[
    "prompt",
    "seconds",
    "video",
    "video[id]",
    "model",
    "backward",
    "seed",
    "steps",
    "guidance",
    "negative_prompt",
];
pub const REMIX_FIELDS: &[&str] = &["prompt", "strength", "seed"];

/// The common fields, read and checked.
pub struct Common {
    pub prompt: String,
    pub model: Option<String>,
    pub seconds: Option<f64>,
    pub size: Option<(usize, usize)>,
    pub seed: Option<u64>,
}

pub fn common(f: &Fields, max_prompt_bytes: usize) -> Bad<Common> {
    let prompt = f
        .text("prompt")?
        .ok_or_else(|| BadRequest::new(Some("prompt"), "'prompt' is required"))?;
    if prompt.trim().is_empty() {
        return Err(BadRequest::new(
            Some("prompt"),
            "'prompt' must not be empty",
        ));
    }
    if prompt.len() > max_prompt_bytes {
        return Err(BadRequest::new(
            Some("prompt"),
            format!(
                "'prompt' is {} bytes; the limit is {max_prompt_bytes}",
                prompt.len()
            ),
        ));
    }
    let seconds = match f.scalar("seconds")? {
        None => None,
        Some(s) => {
            let v: f64 = s.trim().parse().map_err(|_| {
                BadRequest::new(
                    Some("seconds"),
                    format!("'seconds' must be a number of seconds such as \"4\", got '{s}'"),
                )
            })?;
            if !(v.is_finite() && v > 0.0 && v <= 600.0) {
                return Err(BadRequest::new(
                    Some("seconds"),
                    format!("'seconds' must be more than 0 and at most 600, got {s}"),
                ));
            }
            Some(v)
        }
    };
    let size = f.text("size")?.map(parse_size).transpose()?;
    Ok(Common {
        prompt: prompt.to_string(),
        model: f.text("model")?.map(str::to_string),
        seconds,
        size,
        seed: f.number("seed", "a whole number from 0 to 2^64-1")?,
    })
}

pub fn parse_size(s: &str) -> Bad<(usize, usize)> {
    let bad = || {
        BadRequest::new(
            Some("size"),
            format!("'size' must be WIDTHxHEIGHT in pixels such as \"64x64\", got '{s}'"),
        )
    };
    let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(bad)?;
    let w: usize = w.parse().map_err(|_| bad())?;
    let h: usize = h.parse().map_err(|_| bad())?;
    if w == 0 || h == 0 || w > 8192 || h > 8192 {
        return Err(bad());
    }
    Ok((w, h))
}

/// The sampling extras.
pub fn sampling(f: &Fields, spec: &mut JobSpec) -> Bad<()> {
    spec.steps = f.number("steps", "a whole number of steps")?;
    if let Some(s) = spec.steps {
        if s == 0 || s > 200 {
            return Err(BadRequest::new(
                Some("steps"),
                "'steps' must be from 1 to 200",
            ));
        }
    }
    spec.guidance = f.number("guidance", "a number")?;
    if let Some(g) = spec.guidance {
        if !(g.is_finite() && (0.0..=50.0).contains(&g)) {
            return Err(BadRequest::new(
                Some("guidance"),
                "'guidance' must be from 0 to 50",
            ));
        }
    }
    if let Some(n) = f.text("negative_prompt")? {
        spec.negative_prompt = n.to_string();
    }
    spec.fps = f.number("fps", "a number of frames per second")?;
    if let Some(fps) = spec.fps {
        if !(fps.is_finite() && fps > 0.0 && fps <= 120.0) {
            return Err(BadRequest::new(
                Some("fps"),
                "'fps' must be more than 0 and at most 120",
            ));
        }
    }
    Ok(())
}

pub fn strength(f: &Fields) -> Bad<Option<f64>> {
    let s: Option<f64> = f.number("strength", "a number in (0, 1]")?;
    if let Some(v) = s {
        if !(v.is_finite() && v > 0.0 && v <= 1.0) {
            return Err(BadRequest::new(
                Some("strength"),
                "'strength' must be in (0, 1]",
            ));
        }
    }
    Ok(s)
}

pub fn boolean(f: &Fields, name: &str) -> Bad<bool> {
    match f.scalar(name)? {
        None => Ok(false),
        Some("true" | "1") => Ok(true),
        Some("false" | "0") => Ok(false),
        Some(s) => Err(BadRequest::new(
            Some(name),
            format!("'{name}' must be true or false, got '{s}'"),
        )),
    }
}

/// The kind of picture or clip some bytes are, by their first bytes.
pub fn sniff(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if bytes.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("jpg")
    } else if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("webp")
    } else if bytes.starts_with(b"GIF8") {
        Some("gif")
    } else if bytes.len() > 8 && &bytes[4..8] == b"ftyp" {
        Some("mp4")
    } else if bytes.starts_with(b"YUV4MPEG2") {
        Some("y4m")
    } else {
        None
    }
}

/// An image from `input_reference` (a file, or a base64 `data:` URL): its bytes and kind.
pub fn reference_image(f: &Fields) -> Bad<Option<(Vec<u8>, &'static str)>> {
    let param = Some("input_reference");
    let bytes = if let Some((_, bytes)) = f.file("input_reference") {
        bytes.to_vec()
    } else if let Some(url) = f.text("input_reference[image_url]")? {
        let Some(rest) = url.strip_prefix("data:") else {
            return Err(BadRequest::new(
                param,
                "input_reference.image_url must be a data: URL (data:image/png;base64,…): \
                 this server fetches nothing from the network",
            ));
        };
        let (_, b64) = rest.split_once(";base64,").ok_or_else(|| {
            BadRequest::new(
                param,
                "input_reference.image_url must be a base64 data: URL",
            )
        })?;
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| BadRequest::new(param, "input_reference.image_url is not valid base64"))?
    } else if f.text("input_reference[file_id]")?.is_some() {
        return Err(BadRequest::new(
            param,
            "input_reference.file_id is not supported (there is no Files API here): upload the \
             image as input_reference or send it as a data: URL",
        ));
    } else if f.text("input_reference")?.is_some() {
        return Err(BadRequest::new(
            param,
            "input_reference must be an uploaded image file or {\"image_url\": \"data:…\"}",
        ));
    } else {
        return Ok(None);
    };
    match sniff(&bytes) {
        Some(kind @ ("png" | "jpg" | "webp")) => Ok(Some((bytes, kind))),
        _ => Err(BadRequest::new(
            param,
            "input_reference must be a PNG, JPEG or WebP image",
        )),
    }
}

/// Decodes an input picture (the worker and the API's check use the same files).
pub fn read_frame(path: &Path) -> Result<Frame, String> {
    zoetrope_video::read_image(path).map_err(|e| format!("cannot read the input image: {e}"))
}

pub fn read_clip(path: &Path) -> Result<Video, String> {
    zoetrope_video::read_video(path).map_err(|e| format!("cannot read the input video: {e}"))
}

/// Where a spec's inputs are.
pub struct InputPaths<'a> {
    /// The job's own folder (uploads).
    pub job_dir: &'a Path,
    /// Finished videos' files by id.
    pub video_file: &'a dyn Fn(&str) -> PathBuf,
}

impl InputPaths<'_> {
    fn clip(&self, v: &InputVideo) -> Result<Video, String> {
        match v {
            InputVideo::Upload { file } => read_clip(&self.job_dir.join(file)),
            InputVideo::Video { id } => {
                let path = (self.video_file)(id);
                if !path.is_file() {
                    return Err(format!("the source video {id} is gone (deleted?)"));
                }
                read_clip(&path)
            }
        }
    }

    fn image(&self, file: &str) -> Result<Frame, String> {
        read_frame(&self.job_dir.join(file))
    }
}

impl JobSpec {
    /// The engine job this spec describes, its inputs read from disk.
    pub fn to_job(&self, inputs: &InputPaths<'_>) -> Result<Job, String> {
        let mode = match &self.mode {
            ModeSpec::Text => Mode::Text,
            ModeSpec::Image { image } => Mode::Image(inputs.image(image)?),
            ModeSpec::Loop { image } => Mode::Loop {
                first: image.as_deref().map(|i| inputs.image(i)).transpose()?,
            },
            ModeSpec::Extend { video, backward } => Mode::Extend {
                clip: inputs.clip(video)?,
                backward: *backward,
            },
            ModeSpec::Connect { first, second } => Mode::Connect {
                first: inputs.clip(first)?,
                second: inputs.clip(second)?,
            },
            ModeSpec::Edit { video, strength } => Mode::Edit {
                source: inputs.clip(video)?,
                strength: *strength,
            },
        };
        Ok(Job {
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            size: self.size,
            frames: self.frames,
            fps: self.fps,
            steps: self.steps,
            guidance: self.guidance,
            seed: self.seed,
            mode,
            ..Job::default()
        })
    }

    /// The mode's name in the engine's terms (`ModelInfo::modes`).
    pub fn mode_name(&self) -> &'static str {
        match &self.mode {
            ModeSpec::Text => "text",
            ModeSpec::Image { .. } => "image",
            ModeSpec::Loop { .. } => "loop",
            ModeSpec::Extend {
                backward: false, ..
            } => "extend",
            ModeSpec::Extend { backward: true, .. } => "extend_backward",
            ModeSpec::Connect { .. } => "connect",
            ModeSpec::Edit { .. } => "edit",
        }
    }

    /// The frame count for `seconds` at the job's (or model's) frame rate.
    pub fn set_seconds(&mut self, seconds: Option<f64>, info: &ModelInfo) {
        if let Some(s) = seconds {
            self.frames = Some(info.frames_for_seconds(s, self.fps.unwrap_or(info.fps)));
        }
    }
}

/// `"2.125"`-style seconds: three decimals at most, no trailing zeros.
pub fn seconds_string(frames: usize, fps: f64) -> String {
    let s = format!("{:.3}", frames as f64 / fps);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_flatten_like_multipart_fields() {
        let f = Fields::from_json(serde_json::json!({
            "prompt": "a ball", "seconds": 4, "video": {"id": "video_1"}, "model": null
        }))
        .unwrap();
        assert_eq!(f.scalar("seconds").unwrap(), Some("4"));
        assert!(f.text("seconds").is_err(), "a number where text is wanted");
        assert_eq!(f.text("video[id]").unwrap(), Some("video_1"));
        assert_eq!(f.text("model").unwrap(), None);
        assert!(Fields::from_json(serde_json::json!([1])).is_err());
        assert!(Fields::from_json(serde_json::json!({"prompt": [1]})).is_err());
        let err = f.only(&["prompt", "seconds"]).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("video[id]"));
    }

    #[test]
    fn bad_sizes_and_seconds_say_what_to_send() {
        assert_eq!(parse_size("96x64").unwrap(), (96, 64));
        for bad in ["", "64", "0x64", "ax64", "64x64x3", "99999x64"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.message.contains("WIDTHxHEIGHT"), "{}", e.message);
        }
        let mut f = Fields::default();
        f.0.insert("prompt".into(), Field::Text("x".into()));
        f.0.insert("seconds".into(), Field::Text("-1".into()));
        assert!(common(&f, 100).is_err());
        f.0.insert("seconds".into(), Field::Text("2.5".into()));
        assert_eq!(common(&f, 100).unwrap().seconds, Some(2.5));
        assert!(common(&f, 0).is_err(), "prompt over the limit");
    }

    #[test]
    fn images_are_told_apart_by_their_bytes() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\nxxxx"), Some("png"));
        assert_eq!(sniff(b"\0\0\0\x20ftypisom"), Some("mp4"));
        assert_eq!(sniff(b"hello"), None);
        let mut f = Fields::default();
        f.0.insert(
            "input_reference[image_url]".into(),
            Field::Text("https://example.com/a.png".into()),
        );
        assert!(reference_image(&f)
            .unwrap_err()
            .message
            .contains("data: URL"));
    }

    #[test]
    fn specs_round_trip_through_json() {
        let spec = JobSpec {
            prompt: "p".into(),
            negative_prompt: String::new(),
            size: Some((64, 64)),
            frames: Some(17),
            fps: None,
            steps: None,
            guidance: Some(3.0),
            seed: 7,
            mode: ModeSpec::Connect {
                first: InputVideo::Video {
                    id: "video_a".into(),
                },
                second: InputVideo::Upload {
                    file: "second.mp4".into(),
                },
            },
        };
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<JobSpec>(&text).unwrap(), spec);
        assert_eq!(seconds_string(17, 8.0), "2.125");
        assert_eq!(seconds_string(32, 8.0), "4");
    }
}
