//! The HTTP API: OpenAI's Videos API as the pinned `openai` SDK calls it (`/v1/videos`:
//! create, retrieve, list, delete, content, remix, edits, extensions), `/v1/models`, a
//! server-sent event stream of a video's progress, a health check and the web page at `/`.
//! Every error is OpenAI's error JSON; every route but `/`, `/healthz` and the page's script
//! needs a bearer key, and a key sees only its own videos (404 for anyone else's).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::{header, request::Parts, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::db::{NewVideo, VideoRow};
use crate::models::Installed;
use crate::outputs::{self, Variant};
use crate::spec::{self, BadRequest, Field, Fields, InputPaths, InputVideo, JobSpec, ModeSpec};
use crate::{keys, Limits, Models, QueueConfig, Store};

/// The page at `/`.
const PAGE: &str = include_str!("web/index.html");
/// How long `create_and_poll` waits between polls (its `openai-poll-after-ms` header).
const POLL_AFTER_MS: &str = "500";

#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    queue: QueueConfig,
    limits: Limits,
    models: Arc<Models>,
}

impl AppState {
    pub fn new(store: Store, queue: QueueConfig, limits: Limits, models: Arc<Models>) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                queue,
                limits,
                models,
            }),
        }
    }
}

// ---- errors ----

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    code: Option<&'static str>,
    message: String,
    param: Option<String>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            kind,
            code,
            message: message.into(),
            param: None,
        }
    }

    fn bad(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            param: param.map(str::to_string),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                None,
                message,
            )
        }
    }

    fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            Some("not_found"),
            format!("no {what} with that id"),
        )
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("internal error: {e}");
        eprintln!("zoetrope serve: internal error: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            None,
            "the server failed; the request can be retried",
        )
    }
}

impl From<BadRequest> for ApiError {
    fn from(b: BadRequest) -> Self {
        ApiError::bad(b.message, b.param.as_deref())
    }
}

impl From<crate::ServerError> for ApiError {
    fn from(e: crate::ServerError) -> Self {
        ApiError::internal(e)
    }
}

fn error_body(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> Response {
    let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    (status, Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        error_body(
            self.status,
            self.kind,
            self.code,
            &self.message,
            self.param.as_deref(),
        )
    }
}

/// Gives any error response that is not JSON yet (axum's own: unknown route, wrong method,
/// a body over the limit) OpenAI's error shape.
async fn json_errors(req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res;
    }
    let message = match status {
        StatusCode::NOT_FOUND => "no such route: see /v1/videos and /v1/models".to_string(),
        StatusCode::METHOD_NOT_ALLOWED => "this route does not take that method".to_string(),
        StatusCode::PAYLOAD_TOO_LARGE => "the request body is over the server's limit".to_string(),
        s => s.canonical_reason().unwrap_or("error").to_string(),
    };
    let kind = if status.is_server_error() {
        "server_error"
    } else {
        "invalid_request_error"
    };
    error_body(status, kind, None, &message, None)
}

// ---- auth ----

/// The key a request came with.
pub struct Auth(pub String);

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let unauthorized = |msg: &str| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
                msg,
            )
        };
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(unauthorized(
                "no API key: send Authorization: Bearer <key> (make one with `zoetrope keys create`)",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <key>'"))?;
        match keys::authenticate(&state.inner.store, token).await? {
            Some(id) => Ok(Auth(id)),
            None => Err(unauthorized(
                "the API key is not valid (unknown or revoked)",
            )),
        }
    }
}

// ---- JSON shapes ----

fn video_json(v: &VideoRow) -> Value {
    let error = match (&v.status[..], &v.error_code, &v.error_message) {
        ("failed", code, msg) => json!({
            "code": code.as_deref().unwrap_or("failed"),
            "message": msg.as_deref().unwrap_or("the job failed"),
        }),
        _ => Value::Null,
    };
    json!({
        "id": v.id,
        "object": "video",
        "model": v.model,
        "status": v.status,
        "progress": v.progress,
        "created_at": v.created_ms / 1000,
        "completed_at": v.completed_ms.map(|ms| ms / 1000),
        "expires_at": Value::Null,
        "prompt": v.prompt,
        "remixed_from_video_id": v.remixed_from,
        "seconds": v.seconds,
        "size": v.size,
        "error": error,
    })
}

fn with_poll_header(mut res: Response) -> Response {
    res.headers_mut().insert(
        "openai-poll-after-ms",
        HeaderValue::from_static(POLL_AFTER_MS),
    );
    res
}

/// Ids are `video_` and 32 hex digits; anything else is no video (and never reaches a path).
fn valid_id(id: &str) -> bool {
    id.len() == 38
        && id.starts_with("video_")
        && id[6..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn new_id() -> String {
    format!("video_{}", keys::random_hex(16))
}

// ---- routes ----

pub fn router(state: AppState) -> Router {
    let limit = state.inner.limits.max_body_bytes;
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(health))
        .route("/v1/models", get(list_models))
        .route("/v1/videos", post(create).get(list))
        .route("/v1/videos/edits", post(edit))
        .route("/v1/videos/extensions", post(extend))
        .route("/v1/videos/characters", post(characters))
        .route("/v1/videos/characters/{id}", get(characters))
        .route("/v1/videos/{id}", get(retrieve).delete(delete))
        .route("/v1/videos/{id}/content", get(content))
        .route("/v1/videos/{id}/remix", post(remix))
        .route("/v1/videos/{id}/events", get(events))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn(json_errors))
        .with_state(state)
}

async fn page() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(PAGE))
}

/// Up, and the database answers (no key needed, so nothing about anyone's jobs).
async fn health(State(st): State<AppState>) -> Result<Json<Value>, ApiError> {
    st.inner.store.ping().await?;
    Ok(Json(
        json!({"status": "ok", "models": st.inner.models.names()}),
    ))
}

async fn list_models(_auth: Auth, State(st): State<AppState>) -> Json<Value> {
    let data: Vec<Value> = st
        .inner
        .models
        .iter()
        .map(|m| {
            let i = &m.info;
            json!({
                "id": m.name,
                "object": "model",
                "created": m.loaded_at,
                "owned_by": "zoetrope",
                // zoetrope's own: what the model allows, for clients (and the web page).
                "default_size": format!("{}x{}", i.width, i.height),
                "size_multiples": [i.size_multiples.0, i.size_multiples.1],
                "default_seconds": spec::seconds_string(i.frames, i.fps),
                "fps": i.fps,
                "modes": i.modes,
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// A request's fields, from a JSON body or a multipart form.
async fn read_fields(st: &AppState, req: Request) -> Result<Fields, ApiError> {
    let ctype = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if ctype.starts_with("multipart/form-data") {
        let mut form = axum::extract::Multipart::from_request(req, st)
            .await
            .map_err(|e| {
                ApiError::bad(
                    format!("the multipart form cannot be read: {}", e.body_text()),
                    None,
                )
            })?;
        let mut fields = Fields::default();
        loop {
            let field = match form.next_field().await {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    let status = e.status();
                    return Err(ApiError::new(
                        if status == StatusCode::PAYLOAD_TOO_LARGE {
                            status
                        } else {
                            StatusCode::BAD_REQUEST
                        },
                        "invalid_request_error",
                        None,
                        format!("the multipart form cannot be read: {}", e.body_text()),
                    ));
                }
            };
            if fields.0.len() >= 64 {
                return Err(ApiError::bad("too many form fields", None));
            }
            let name = field.name().unwrap_or("").to_string();
            let file_name = field.file_name().map(str::to_string);
            let content_type = field.content_type().map(str::to_string);
            let bytes = field.bytes().await.map_err(|e| {
                ApiError::new(e.status(), "invalid_request_error", None, e.body_text())
            })?;
            let value = if file_name.is_some() {
                Field::File {
                    name: file_name,
                    content_type,
                    bytes: bytes.to_vec(),
                }
            } else {
                let text = String::from_utf8(bytes.to_vec()).map_err(|_| {
                    ApiError::bad(
                        format!("form field '{name}' is not UTF-8 text"),
                        Some(&name),
                    )
                })?;
                Field::Text(text)
            };
            fields.0.insert(name, value);
        }
        Ok(fields)
    } else if ctype.starts_with("application/json") || ctype.is_empty() {
        let bytes = axum::body::to_bytes(req.into_body(), st.inner.limits.max_body_bytes)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "invalid_request_error",
                    None,
                    format!(
                        "the request body is over the limit of {} bytes",
                        st.inner.limits.max_body_bytes
                    ),
                )
            })?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}"), None))?;
        Ok(Fields::from_json(value)?)
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            None,
            format!("send application/json or multipart/form-data, not '{ctype}'"),
        ))
    }
}

/// A request ready to queue: the spec, and uploads to write into the job's folder.
struct Pending {
    model: String,
    spec: JobSpec,
    uploads: Vec<(String, Vec<u8>)>,
    remixed_from: Option<String>,
}

impl Pending {
    /// A request's common fields, its mode and uploads, and the sampling extras.
    fn from_request(
        model: &str,
        c: spec::Common,
        mode: ModeSpec,
        uploads: Vec<(String, Vec<u8>)>,
        f: &Fields,
    ) -> Result<Self, ApiError> {
        let mut p = Self::new(
            model.to_string(),
            c.prompt,
            c.seed.unwrap_or_else(rand::random),
            mode,
        );
        p.uploads = uploads;
        p.spec.size = c.size;
        spec::sampling(f, &mut p.spec)?;
        Ok(p)
    }

    fn new(model: String, prompt: String, seed: u64, mode: ModeSpec) -> Self {
        Self {
            model,
            spec: JobSpec {
                prompt,
                negative_prompt: String::new(),
                size: None,
                frames: None,
                fps: None,
                steps: None,
                guidance: None,
                seed,
                mode,
            },
            uploads: Vec::new(),
            remixed_from: None,
        }
    }
}

fn pick_model<'a>(st: &'a AppState, name: Option<&str>) -> Result<&'a Installed, ApiError> {
    st.inner.models.get(name).ok_or_else(|| {
        ApiError::bad(
            format!(
                "model '{}' is not installed here; installed: {}",
                name.unwrap_or(""),
                st.inner.models.names().join(", ")
            ),
            Some("model"),
        )
    })
}

/// A clip to start from: `video[id]` / `video_id` (a completed video of this key) or an
/// uploaded `video` file.
async fn source_video(
    st: &AppState,
    key: &str,
    f: &Fields,
    id_fields: &[&str],
    upload_field: Option<&str>,
    uploads: &mut Vec<(String, Vec<u8>)>,
    upload_name: &str,
) -> Result<Option<InputVideo>, ApiError> {
    if let Some(field) = upload_field {
        if let Some((_, bytes)) = f.file(field) {
            let kind = match spec::sniff(bytes) {
                Some(k @ ("mp4" | "gif" | "y4m" | "png")) => k,
                _ => {
                    return Err(ApiError::bad(
                        format!("'{field}' must be an MP4, GIF or Y4M video"),
                        Some(field),
                    ))
                }
            };
            let file = format!("{upload_name}.{kind}");
            uploads.push((file.clone(), bytes.to_vec()));
            return Ok(Some(InputVideo::Upload { file }));
        }
    }
    for name in id_fields {
        if let Some(id) = f.text(name)? {
            return Ok(Some(InputVideo::Video {
                id: completed_video(st, key, id, name).await?.id,
            }));
        }
    }
    Ok(None)
}

async fn completed_video(
    st: &AppState,
    key: &str,
    id: &str,
    param: &str,
) -> Result<VideoRow, ApiError> {
    let row = if valid_id(id) {
        st.inner.store.video(key, id).await?
    } else {
        None
    };
    let Some(row) = row else {
        return Err(ApiError::bad(
            format!("there is no video '{id}'"),
            Some(param),
        ));
    };
    if row.status != "completed" {
        return Err(ApiError::bad(
            format!(
                "video {id} is {}, not completed: wait for it to finish",
                row.status
            ),
            Some(param),
        ));
    }
    Ok(row)
}

/// The `video` of `/videos/edits` and `/videos/extensions`: an uploaded clip, or
/// `{"id": …}` of a completed video.
async fn clip_to_change(
    st: &AppState,
    key: &str,
    f: &Fields,
    uploads: &mut Vec<(String, Vec<u8>)>,
) -> Result<InputVideo, ApiError> {
    let video = source_video(
        st,
        key,
        f,
        &["video[id]"],
        Some("video"),
        uploads,
        "input-video",
    )
    .await?;
    required(
        video,
        "video",
        "'video' is required: an uploaded clip or {\"id\": …} of a completed video",
    )
}

fn required<T>(v: Option<T>, param: &str, message: &str) -> Result<T, ApiError> {
    v.ok_or_else(|| ApiError::bad(message, Some(param)))
}

async fn create(
    State(st): State<AppState>,
    Auth(key): Auth,
    req: Request,
) -> Result<Response, ApiError> {
    let f = read_fields(&st, req).await?;
    f.only(spec::CREATE_FIELDS)?;
    let c = spec::common(&f, st.inner.limits.max_prompt_bytes)?;
    let installed = pick_model(&st, c.model.as_deref())?;
    let image = spec::reference_image(&f)?;
    let mut uploads = Vec::new();
    let image_file = image.map(|(bytes, kind)| {
        let name = format!("input-image.{kind}");
        uploads.push((name.clone(), bytes));
        name
    });
    let mode_name = match f.text("mode")? {
        Some(m) => m.to_string(),
        None if image_file.is_some() => "image".into(),
        None => "text".into(),
    };
    let first = source_video(
        &st,
        &key,
        &f,
        &["video_id", "video[id]"],
        None,
        &mut uploads,
        "input-video",
    )
    .await?;
    let second = source_video(
        &st,
        &key,
        &f,
        &["second_video_id"],
        None,
        &mut uploads,
        "input-second",
    )
    .await?;
    let need = |v: Option<InputVideo>, p: &str| {
        required(
            v,
            p,
            &format!("mode '{mode_name}' needs '{p}': the id of a completed video"),
        )
    };
    let mode = match mode_name.as_str() {
        "text" => ModeSpec::Text,
        "image" => ModeSpec::Image {
            image: required(image_file, "input_reference", "mode 'image' needs an input_reference image")?,
        },
        "loop" => ModeSpec::Loop { image: image_file },
        "extend" | "extend_backward" => ModeSpec::Extend {
            video: need(first, "video_id")?,
            backward: mode_name == "extend_backward",
        },
        "connect" => ModeSpec::Connect {
            first: need(first, "video_id")?,
            second: need(second, "second_video_id")?,
        },
        "edit" => ModeSpec::Edit {
            video: need(first, "video_id")?,
            strength: spec::strength(&f)?,
        },
        other => {
            return Err(ApiError::bad(
                format!("unknown mode '{other}': use text, image, loop, extend, extend_backward, connect or edit"),
                Some("mode"),
            ))
        }
    };
    let seconds = c.seconds;
    let mut p = Pending::from_request(&installed.name, c, mode, uploads, &f)?;
    p.spec.set_seconds(seconds, &installed.info);
    queue(&st, &key, p).await
}

async fn edit(
    State(st): State<AppState>,
    Auth(key): Auth,
    req: Request,
) -> Result<Response, ApiError> {
    let f = read_fields(&st, req).await?;
    f.only(spec::EDIT_FIELDS)?;
    let c = spec::common(&f, st.inner.limits.max_prompt_bytes)?;
    let installed = pick_model(&st, c.model.as_deref())?;
    let mut uploads = Vec::new();
    let video = clip_to_change(&st, &key, &f, &mut uploads).await?;
    let mode = ModeSpec::Edit {
        video,
        strength: spec::strength(&f)?,
    };
    let p = Pending::from_request(&installed.name, c, mode, uploads, &f)?;
    queue(&st, &key, p).await
}

async fn extend(
    State(st): State<AppState>,
    Auth(key): Auth,
    req: Request,
) -> Result<Response, ApiError> {
    let f = read_fields(&st, req).await?;
    f.only(spec::EXTEND_FIELDS)?;
    let c = spec::common(&f, st.inner.limits.max_prompt_bytes)?;
    let seconds = required(
        c.seconds,
        "seconds",
        "'seconds' is required: the length of the new part",
    )?;
    let mut uploads = Vec::new();
    let video = clip_to_change(&st, &key, &f, &mut uploads).await?;
    // An extension runs on the model that made its source, unless told otherwise.
    let source_model = match &video {
        InputVideo::Video { id } => st.inner.store.video(&key, id).await?.map(|v| v.model),
        InputVideo::Upload { .. } => None,
    };
    let installed = pick_model(&st, c.model.as_deref().or(source_model.as_deref()))?;
    let mode = ModeSpec::Extend {
        video,
        backward: spec::boolean(&f, "backward")?,
    };
    let mut p = Pending::from_request(&installed.name, c, mode, uploads, &f)?;
    p.spec.set_seconds(Some(seconds), &installed.info);
    queue(&st, &key, p).await
}

async fn remix(
    State(st): State<AppState>,
    Auth(key): Auth,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let f = read_fields(&st, req).await?;
    f.only(spec::REMIX_FIELDS)?;
    let prompt = spec::common(&f, st.inner.limits.max_prompt_bytes)?;
    let source = match valid_id(&id) {
        true => st.inner.store.video(&key, &id).await?,
        false => None,
    };
    let source = source.ok_or_else(|| ApiError::not_found("video"))?;
    if source.status != "completed" {
        return Err(ApiError::bad(
            format!(
                "video {id} is {}, not completed: a remix needs a finished video",
                source.status
            ),
            None,
        ));
    }
    let old: JobSpec = serde_json::from_str(&source.spec).map_err(ApiError::internal)?;
    // A remix redoes the finished clip with the new prompt (an edit of it), keeping its model,
    // size, length and seed.
    let mode = ModeSpec::Edit {
        video: InputVideo::Video {
            id: source.id.clone(),
        },
        strength: spec::strength(&f)?,
    };
    let mut p = Pending::new(
        source.model.clone(),
        prompt.prompt,
        prompt.seed.unwrap_or(old.seed),
        mode,
    );
    p.spec.size = spec::parse_size(&source.size).ok();
    p.spec.steps = old.steps;
    p.spec.guidance = old.guidance;
    p.spec.fps = old.fps;
    p.spec.negative_prompt = old.negative_prompt;
    p.remixed_from = Some(source.id);
    queue(&st, &key, p).await
}

/// Checks a request against its model and the limits, writes its uploads and queues it.
async fn queue(st: &AppState, key: &str, p: Pending) -> Result<Response, ApiError> {
    let installed = pick_model(st, Some(&p.model))?;
    let info = &installed.info;
    if !info.modes.contains(&p.spec.mode_name()) {
        return Err(ApiError::bad(
            format!(
                "model '{}' does not do mode '{}'; it does: {}",
                installed.name,
                p.spec.mode_name(),
                info.modes.join(", ")
            ),
            Some("mode"),
        ));
    }
    // Checked again, atomically, when the row is inserted; this spares writing the uploads.
    if st.inner.store.pending_for_key(key).await? >= st.inner.limits.max_pending_per_key {
        return Err(too_many(st.inner.limits.max_pending_per_key));
    }
    let id = new_id();
    let dir = st.inner.queue.video_dir(&id);
    for (name, bytes) in &p.uploads {
        outputs::write_atomic(&dir, name, bytes).map_err(ApiError::internal)?;
    }
    // Build the engine job from the stored files exactly as the worker will, and let the model
    // check it (sizes, frame counts, what the mode needs).
    let checked = {
        let st = st.clone();
        let spec = p.spec.clone();
        let dir = dir.clone();
        let model = installed.model.clone();
        let limit = st.inner.limits.max_pixel_frames;
        let (w0, h0, f0) = (info.width, info.height, info.frames);
        tokio::task::spawn_blocking(move || -> Result<(), ApiError> {
            let video_file =
                |id: &str| outputs::path(&st.inner.queue.video_dir(id), Variant::Video);
            let inputs = InputPaths {
                job_dir: &dir,
                video_file: &video_file,
            };
            let job = spec.to_job(&inputs).map_err(|m| ApiError::bad(m, None))?;
            let (w, h) = job.size.unwrap_or((w0, h0));
            let frames = job.frames.unwrap_or(f0);
            let cost = (w as u64) * (h as u64) * (frames as u64);
            if cost > limit {
                return Err(ApiError::bad(
                    format!(
                        "{w}x{h} for {frames} frames is {cost} pixel-frames; this server allows \
                         {limit}: ask for a smaller size or fewer seconds"
                    ),
                    Some("size"),
                ));
            }
            model.check(&job).map_err(|e| {
                if e.is_request_error() {
                    ApiError::bad(e.to_string(), None)
                } else {
                    ApiError::internal(e)
                }
            })
        })
        .await
        .map_err(ApiError::internal)?
    };
    if let Err(e) = checked {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(e);
    }
    let size = match p.spec.size {
        Some((w, h)) => format!("{w}x{h}"),
        None => format!("{}x{}", info.width, info.height),
    };
    let seconds = spec::seconds_string(
        p.spec.frames.unwrap_or(info.frames),
        p.spec.fps.unwrap_or(info.fps),
    );
    let spec_json = serde_json::to_string(&p.spec).map_err(ApiError::internal)?;
    let row = st
        .inner
        .store
        .insert_video(
            &NewVideo {
                id: &id,
                key_id: key,
                model: &installed.name,
                prompt: &p.spec.prompt,
                size: &size,
                seconds: &seconds,
                spec: &spec_json,
                remixed_from: p.remixed_from.as_deref(),
            },
            st.inner.limits.max_pending_per_key,
        )
        .await;
    match row {
        Ok(Some(row)) => Ok(with_poll_header(Json(video_json(&row)).into_response())),
        Ok(None) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(too_many(st.inner.limits.max_pending_per_key))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e.into())
        }
    }
}

fn too_many(limit: i64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_exceeded",
        Some("rate_limit_exceeded"),
        format!("this key has {limit} videos queued or running, the most allowed: wait for one to finish"),
    )
}

async fn own_video(st: &AppState, key: &str, id: &str) -> Result<VideoRow, ApiError> {
    if !valid_id(id) {
        return Err(ApiError::not_found("video"));
    }
    st.inner
        .store
        .video(key, id)
        .await?
        .ok_or_else(|| ApiError::not_found("video"))
}

async fn retrieve(
    State(st): State<AppState>,
    Auth(key): Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let v = own_video(&st, &key, &id).await?;
    Ok(with_poll_header(Json(video_json(&v)).into_response()))
}

#[derive(Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<String>,
    order: Option<String>,
}

async fn list(
    State(st): State<AppState>,
    Auth(key): Auth,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad(format!("bad query: {}", e.body_text()), None))?;
    let limit: i64 = match q.limit.as_deref() {
        None => 20,
        Some(s) => match s.parse() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(ApiError::bad(
                    format!("'limit' must be from 1 to 100, got '{s}'"),
                    Some("limit"),
                ))
            }
        },
    };
    let descending = match q.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(o) => {
            return Err(ApiError::bad(
                format!("'order' must be asc or desc, got '{o}'"),
                Some("order"),
            ))
        }
    };
    let after = match q.after.as_deref() {
        None => None,
        Some(a) => Some(
            match valid_id(a) {
                true => st.inner.store.video(&key, a).await?,
                false => None,
            }
            .ok_or_else(|| {
                ApiError::bad(
                    format!("'after' names no video of yours: '{a}'"),
                    Some("after"),
                )
            })?,
        ),
    };
    let mut rows = st
        .inner
        .store
        .list_videos(&key, after.as_ref(), limit, descending)
        .await?;
    let has_more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let data: Vec<Value> = rows.iter().map(video_json).collect();
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "first_id": rows.first().map(|v| v.id.clone()),
        "last_id": rows.last().map(|v| v.id.clone()),
        "has_more": has_more,
    })))
}

async fn delete(
    State(st): State<AppState>,
    Auth(key): Auth,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let v = own_video(&st, &key, &id).await?;
    if !st.inner.store.delete_video(&key, &v.id).await? {
        return Err(ApiError::not_found("video"));
    }
    // A worker still running it finds the job gone at its next heartbeat and drops it.
    let dir = st.inner.queue.video_dir(&v.id);
    tokio::task::spawn_blocking(move || {
        let _ = std::fs::remove_dir_all(dir);
    });
    Ok(Json(
        json!({"id": v.id, "object": "video.deleted", "deleted": true}),
    ))
}

#[derive(Deserialize)]
struct ContentQuery {
    variant: Option<String>,
}

async fn content(
    State(st): State<AppState>,
    Auth(key): Auth,
    Path(id): Path<String>,
    q: Result<Query<ContentQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad(format!("bad query: {}", e.body_text()), None))?;
    let variant = match q.variant.as_deref() {
        None => Variant::Video,
        Some(s) => Variant::parse(s).ok_or_else(|| {
            ApiError::bad(
                format!("'variant' must be video, thumbnail or spritesheet, got '{s}'"),
                Some("variant"),
            )
        })?,
    };
    let v = own_video(&st, &key, &id).await?;
    if v.status != "completed" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            Some("video_not_ready"),
            format!(
                "video {id} is {}: its content exists once it is completed",
                v.status
            ),
        ));
    }
    let path = outputs::path(&st.inner.queue.video_dir(&v.id), variant);
    let bytes = tokio::fs::read(&path).await.map_err(|e| {
        ApiError::internal(format!(
            "the finished video's file {} cannot be read: {e}",
            path.display()
        ))
    })?;
    Ok((
        [
            (header::CONTENT_TYPE, variant.content_type()),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        Body::from(bytes),
    )
        .into_response())
}

/// Server-sent events: the video as JSON (`event: video`) whenever its status or progress
/// changes, ending once it is completed or failed.
async fn events(
    State(st): State<AppState>,
    Auth(key): Auth,
    Path(id): Path<String>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let first = own_video(&st, &key, &id).await?;
    let state = (st, key, id, None::<(String, i64)>, false, Some(first));
    let stream =
        futures_util::stream::unfold(state, |(st, key, id, last, done, mut next)| async move {
            if done {
                return None;
            }
            loop {
                let row = match next.take() {
                    Some(r) => Some(r),
                    None => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        st.inner.store.video(&key, &id).await.ok().flatten()
                    }
                };
                let Some(row) = row else {
                    // Deleted while watched.
                    let ev = SseEvent::default()
                        .event("deleted")
                        .data(json!({"id": id}).to_string());
                    return Some((Ok(ev), (st, key, id, last, true, None)));
                };
                let now = (row.status.clone(), row.progress);
                if last.as_ref() != Some(&now) {
                    let finished = row.status == "completed" || row.status == "failed";
                    let ev = SseEvent::default()
                        .event("video")
                        .data(video_json(&row).to_string());
                    return Some((Ok(ev), (st, key, id, Some(now), finished, None)));
                }
            }
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn characters() -> ApiError {
    ApiError::new(
        StatusCode::NOT_IMPLEMENTED,
        "invalid_request_error",
        Some("unsupported"),
        "characters are not supported by zoetrope: give the subject in the prompt, or an \
         input_reference image",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_well_formed_ids_reach_the_database() {
        assert!(valid_id(&new_id()));
        for bad in [
            "",
            "video_",
            "../../etc/passwd",
            "video_ABCDEF0123456789abcdef0123456789",
            "video_0123456789abcdef0123456789abcdeg",
        ] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
