//! `zoetrope serve`: the OpenAI Videos API (as the official `openai` SDK speaks it) over a
//! durable job queue, with API keys and a web page.
//!
//! - [`db`]: the queue and the keys, in SQLite (embedded, the default) or Postgres;
//! - [`api`]: the HTTP routes, OpenAI's JSON shapes and errors, the page at `/`;
//! - [`spec`]: what a request asks for, checked against the model before it is queued;
//! - [`worker`]: claims jobs, runs them through `zoetrope-engine`, keeps its lease alive and
//!   writes the outputs atomically;
//! - [`keys`]: bearer API keys, stored as SHA-256 hashes.

pub mod api;
pub mod db;
pub mod keys;
pub mod models;
pub mod outputs;
pub mod spec;
pub mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use db::Store;
pub use models::Models;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Where the queue lives and how its jobs run; shared by `serve` and `worker`.
#[derive(Clone, Debug)]
pub struct QueueConfig {
    /// Outputs, inputs and (without `database_url`) the SQLite database.
    pub data_dir: PathBuf,
    /// `postgres://…` (many workers on many machines) or `sqlite:…`; the data dir's
    /// `queue.sqlite` when `None`.
    pub database_url: Option<String>,
    /// How long a claimed job stays a worker's without a heartbeat.
    pub lease: Duration,
    /// Runs of a job before it fails for good (worker lost, or an internal error).
    pub max_attempts: i64,
}

impl QueueConfig {
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            database_url: None,
            lease: Duration::from_secs(30),
            max_attempts: 3,
        }
    }

    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("queue.sqlite")
    }

    pub async fn open_store(&self) -> Result<Store, ServerError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|e| {
            ServerError::Config(format!(
                "cannot create the data dir {}: {e}",
                self.data_dir.display()
            ))
        })?;
        Store::open(self.database_url.as_deref(), &self.sqlite_path()).await
    }

    /// The folder of one video's inputs and outputs.
    pub fn video_dir(&self, id: &str) -> PathBuf {
        video_dir(&self.data_dir, id)
    }
}

pub fn video_dir(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("videos").join(id)
}

/// What the API enforces per request and per key.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body (multipart uploads included).
    pub max_body_bytes: usize,
    /// Largest width × height × frames of one job.
    pub max_pixel_frames: u64,
    /// Jobs a key may have queued or running at once (429 beyond).
    pub max_pending_per_key: i64,
    /// Longest prompt, in bytes.
    pub max_prompt_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            // 1280×720×121 (a Wan 2.2 clip) fits; a minute at 1080p does not.
            max_pixel_frames: 1280 * 720 * 121,
            max_pending_per_key: 16,
            max_prompt_bytes: 4096,
        }
    }
}

/// `zoetrope serve`.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub addr: SocketAddr,
    pub queue: QueueConfig,
    pub limits: Limits,
    /// In-process workers (0: only `zoetrope worker` processes run jobs).
    pub workers: usize,
    /// How long a shutdown waits for running jobs before putting them back in the queue.
    pub shutdown_grace: Duration,
}

/// Runs the API (and in-process workers) until Ctrl-C / SIGTERM; then stops taking jobs, lets
/// running ones finish for `shutdown_grace` and puts the rest back in the queue.
pub async fn serve(cfg: ServeConfig, models: Arc<Models>) -> anyhow::Result<()> {
    let store = cfg.queue.open_store().await?;
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.addr))?;
    let local = listener.local_addr()?;
    let shutdown = worker::Shutdown::new();
    let mut handles = Vec::new();
    for i in 0..cfg.workers {
        let w = worker::Worker::new(
            format!("{}-{}", worker::host_tag(), i),
            store.clone(),
            cfg.queue.clone(),
            models.clone(),
        );
        handles.push(tokio::spawn(w.run(shutdown.clone(), cfg.shutdown_grace)));
    }
    let state = api::AppState::new(store.clone(), cfg.queue.clone(), cfg.limits.clone(), models);
    let app = api::router(state);
    // The address line is what scripts (and the tests) wait for.
    println!("zoetrope serve: listening on http://{local}");
    eprintln!(
        "zoetrope serve: {} in-process worker(s), database {}, data in {}",
        cfg.workers,
        match store.backend() {
            db::Backend::Sqlite => "SQLite".to_string(),
            db::Backend::Postgres => "Postgres".to_string(),
        },
        cfg.queue.data_dir.display()
    );
    let sd = shutdown.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            worker::wait_for_signal().await;
            eprintln!(
                "zoetrope serve: shutting down (running jobs finish or go back to the queue)"
            );
            sd.trigger();
        })
        .await?;
    for h in handles {
        h.await??;
    }
    store.close().await;
    Ok(())
}

/// `zoetrope worker`: claims and runs jobs until Ctrl-C / SIGTERM.
pub async fn run_worker(
    queue: QueueConfig,
    models: Arc<Models>,
    count: usize,
    shutdown_grace: Duration,
) -> anyhow::Result<()> {
    let store = queue.open_store().await?;
    let shutdown = worker::Shutdown::new();
    let mut handles = Vec::new();
    for i in 0..count.max(1) {
        let w = worker::Worker::new(
            format!("{}-{}", worker::host_tag(), i),
            store.clone(),
            queue.clone(),
            models.clone(),
        );
        handles.push(tokio::spawn(w.run(shutdown.clone(), shutdown_grace)));
    }
    eprintln!(
        "zoetrope worker: {} worker(s) waiting for jobs",
        count.max(1)
    );
    let sd = shutdown.clone();
    tokio::spawn(async move {
        worker::wait_for_signal().await;
        eprintln!("zoetrope worker: shutting down (running jobs finish or go back to the queue)");
        sd.trigger();
    });
    for h in handles {
        h.await??;
    }
    store.close().await;
    Ok(())
}
