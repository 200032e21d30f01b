//! A worker: claim a job, run it through the engine on a blocking thread, keep the lease alive
//! (and the progress current) while it runs, write the outputs, mark it done.
//!
//! Failures: a request the model refuses fails at once (it would fail again); anything else is
//! retried until the job's attempts run out. A worker that is killed simply stops
//! heartbeating: its lease runs out and another worker (or this one, restarted) runs the job
//! again. On shutdown a worker takes no new job, gives its running job the grace period to
//! finish, and otherwise puts it back in the queue without counting the attempt.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::db::{Claim, Claimed};
use crate::outputs;
use crate::spec::{InputPaths, JobSpec};
use crate::{Models, QueueConfig, ServerError, Store};

/// How often an idle worker looks for a job.
const POLL: Duration = Duration::from_millis(200);
/// How often a running job's progress is written (and its lease renewed when due).
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Tells workers to stop.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            tx: Arc::new(tx),
            rx,
        }
    }

    pub fn trigger(&self) {
        let _ = self.tx.send(true);
    }

    pub fn is_set(&self) -> bool {
        *self.rx.borrow()
    }

    pub async fn wait(&mut self) {
        while !*self.rx.borrow() {
            if self.rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `host:pid`, to tell workers apart in the runs table.
pub fn host_tag() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "host".into());
    format!("{host}:{}", std::process::id())
}

pub struct Worker {
    name: String,
    store: Store,
    queue: QueueConfig,
    models: Arc<Models>,
}

/// How a run ended.
enum Outcome {
    Done {
        seconds: String,
        size: String,
    },
    /// The job cannot work as asked: fail it now.
    Refused(String),
    /// Something went wrong that another try may not hit.
    Error(String),
}

impl Worker {
    pub fn new(name: String, store: Store, queue: QueueConfig, models: Arc<Models>) -> Self {
        Self {
            name,
            store,
            queue,
            models,
        }
    }

    /// Claims and runs jobs until `shutdown`.
    pub async fn run(self, shutdown: Shutdown, grace: Duration) -> Result<(), ServerError> {
        let mut idle = shutdown.clone();
        loop {
            if shutdown.is_set() {
                return Ok(());
            }
            let claim = match self
                .store
                .claim(&self.name, self.queue.lease, self.queue.max_attempts)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    // The database may be restarting: wait and try again.
                    tracing::warn!("worker {}: claim failed: {e}", self.name);
                    eprintln!("zoetrope worker {}: cannot claim a job: {e}", self.name);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = idle.wait() => {}
                    }
                    continue;
                }
            };
            match claim {
                Claim::Job(job) => self.run_one(*job, shutdown.clone(), grace).await?,
                Claim::Exhausted(id) => {
                    eprintln!(
                        "zoetrope worker {}: {id} failed: out of attempts",
                        self.name
                    )
                }
                Claim::Empty => {
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        _ = idle.wait() => {}
                    }
                }
            }
        }
    }

    async fn run_one(
        &self,
        claimed: Claimed,
        mut shutdown: Shutdown,
        grace: Duration,
    ) -> Result<(), ServerError> {
        let id = claimed.video.id.clone();
        let progress = Arc::new(AtomicU32::new(0));
        let task = {
            let progress = progress.clone();
            let models = self.models.clone();
            let queue = self.queue.clone();
            let video = claimed.video.clone();
            tokio::task::spawn_blocking(move || execute(&models, &queue, &video, &progress))
        };
        tokio::pin!(task);
        let lease = self.queue.lease;
        let mut ticker = tokio::time::interval(PROGRESS_EVERY);
        let mut last_sent = (u32::MAX, std::time::Instant::now());
        let mut deadline: Option<tokio::time::Instant> = None;
        let mut lost = false;
        let outcome = loop {
            tokio::select! {
                res = &mut task => {
                    break match res {
                        Ok(o) => o,
                        Err(e) => Outcome::Error(format!("the generation thread failed: {e}")),
                    };
                }
                _ = ticker.tick(), if !lost => {
                    let p = progress.load(Ordering::Relaxed);
                    // Renew at least every third of the lease even when progress is flat.
                    if p != last_sent.0 || last_sent.1.elapsed() >= lease / 3 {
                        match self.store.heartbeat(&id, &self.name, lease, i64::from(p)).await {
                            Ok(true) => last_sent = (p, std::time::Instant::now()),
                            Ok(false) => {
                                // Deleted, or the lease lapsed and someone else runs it now.
                                eprintln!("zoetrope worker {}: {id} is no longer ours", self.name);
                                lost = true;
                            }
                            Err(e) => eprintln!("zoetrope worker {}: heartbeat failed: {e}", self.name),
                        }
                    }
                    if let Some(d) = deadline {
                        if tokio::time::Instant::now() >= d {
                            self.store.requeue(&id, &self.name, "shutdown", None, true).await?;
                            eprintln!("zoetrope worker {}: {id} put back in the queue", self.name);
                            return Ok(());
                        }
                    }
                }
                _ = shutdown.wait(), if deadline.is_none() => {
                    deadline = Some(tokio::time::Instant::now() + grace);
                }
            }
        };
        if lost {
            // The thread could not be stopped and may have written files: they belong to the
            // job's new owner (the same seed gives the same video, each file renamed whole
            // into place), or to nobody if the job was deleted.
            if self.store.video_any(&id).await?.is_none() {
                let _ = std::fs::remove_dir_all(self.queue.video_dir(&id));
            }
            return Ok(());
        }
        match outcome {
            Outcome::Done { seconds, size } => {
                if !self
                    .store
                    .complete(&id, &self.name, &seconds, &size)
                    .await?
                {
                    eprintln!(
                        "zoetrope worker {}: {id} finished after losing its lease",
                        self.name
                    );
                }
            }
            Outcome::Refused(msg) => {
                self.store
                    .fail(&id, &self.name, "invalid_request", &msg)
                    .await?;
            }
            Outcome::Error(msg) => {
                if claimed.attempt >= self.queue.max_attempts {
                    self.store
                        .fail(&id, &self.name, "internal_error", &msg)
                        .await?;
                } else {
                    self.store
                        .requeue(&id, &self.name, "error", Some(&msg), false)
                        .await?;
                }
                eprintln!(
                    "zoetrope worker {}: {id} attempt {}: {msg}",
                    self.name, claimed.attempt
                );
            }
        }
        Ok(())
    }
}

/// Runs one job to its files (blocking).
fn execute(
    models: &Models,
    queue: &QueueConfig,
    video: &crate::db::VideoRow,
    progress: &AtomicU32,
) -> Outcome {
    let spec: JobSpec = match serde_json::from_str(&video.spec) {
        Ok(s) => s,
        Err(e) => return Outcome::Refused(format!("the stored job cannot be read: {e}")),
    };
    let Some(installed) = models.get(Some(&video.model)) else {
        return Outcome::Error(format!(
            "model '{}' is not installed on this worker (installed: {})",
            video.model,
            models.names().join(", ")
        ));
    };
    let dir = queue.video_dir(&video.id);
    let video_file = |id: &str| outputs::path(&queue.video_dir(id), outputs::Variant::Video);
    let inputs = InputPaths {
        job_dir: &dir,
        video_file: &video_file,
    };
    let job = match spec.to_job(&inputs) {
        Ok(j) => j,
        Err(msg) => return Outcome::Refused(msg),
    };
    let result = installed.model.run(&job, &mut |event| {
        let p = (100.0 * event.progress()).floor().clamp(0.0, 99.0) as u32;
        progress.fetch_max(p, Ordering::Relaxed);
    });
    let done = match result {
        Ok(d) => d,
        Err(e) if e.is_request_error() => return Outcome::Refused(e.to_string()),
        Err(e) => return Outcome::Error(e.to_string()),
    };
    if let Err(msg) = outputs::write_all(&dir, &done.video) {
        return Outcome::Error(msg);
    }
    Outcome::Done {
        seconds: crate::spec::seconds_string(done.video.len(), done.video.fps()),
        size: format!("{}x{}", done.video.width(), done.video.height()),
    }
}
