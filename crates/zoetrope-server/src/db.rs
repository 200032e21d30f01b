//! The job queue and the API keys, in SQLite (embedded, the default) or Postgres (many workers
//! on many machines). One schema and one set of queries through sqlx's `Any` driver; only the
//! claim differs: Postgres takes the next job with `FOR UPDATE SKIP LOCKED`, SQLite's single
//! writer makes its `UPDATE … WHERE id = (SELECT …)` atomic on its own.
//!
//! A job's life: `queued` → claimed by a worker (`in_progress`, a lease that the worker's
//! heartbeat keeps extending) → `completed` or `failed`. A lease that runs out (the worker was
//! killed, its machine lost) makes the job claimable again; each claim counts an attempt, and a
//! job out of attempts fails with the reason. Every write a worker makes names its lease, so a
//! worker that lost its lease can no longer touch the job: a job completes exactly once.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::ServerError;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS api_keys (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        hash TEXT NOT NULL UNIQUE,
        prefix TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        revoked_at BIGINT
    )",
    "CREATE TABLE IF NOT EXISTS videos (
        id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        status TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt TEXT NOT NULL,
        size TEXT NOT NULL,
        seconds TEXT NOT NULL,
        spec TEXT NOT NULL,
        remixed_from TEXT,
        progress BIGINT NOT NULL,
        attempts BIGINT NOT NULL,
        lease_owner TEXT,
        lease_expires_ms BIGINT,
        error_code TEXT,
        error_message TEXT,
        completed_ms BIGINT
    )",
    "CREATE INDEX IF NOT EXISTS videos_by_status ON videos (status, created_ms)",
    "CREATE INDEX IF NOT EXISTS videos_by_key ON videos (key_id, created_ms)",
    // One row per attempt: who ran it and how it ended (the audit the durability tests read).
    "CREATE TABLE IF NOT EXISTS runs (
        video_id TEXT NOT NULL,
        worker TEXT NOT NULL,
        attempt BIGINT NOT NULL,
        started_ms BIGINT NOT NULL,
        ended_ms BIGINT,
        outcome TEXT
    )",
    "CREATE INDEX IF NOT EXISTS runs_by_video ON runs (video_id)",
];

/// A stored video job, as the API shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoRow {
    pub id: String,
    pub key_id: String,
    pub created_ms: i64,
    pub status: String,
    pub model: String,
    pub prompt: String,
    pub size: String,
    pub seconds: String,
    pub spec: String,
    pub remixed_from: Option<String>,
    pub progress: i64,
    pub attempts: i64,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub completed_ms: Option<i64>,
}

const VIDEO_COLUMNS: &str = "id, key_id, created_ms, status, model, prompt, size, seconds, spec, \
     remixed_from, progress, attempts, error_code, error_message, completed_ms";

impl VideoRow {
    fn from_row(row: &AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: row.try_get("id")?,
            key_id: row.try_get("key_id")?,
            created_ms: row.try_get("created_ms")?,
            status: row.try_get("status")?,
            model: row.try_get("model")?,
            prompt: row.try_get("prompt")?,
            size: row.try_get("size")?,
            seconds: row.try_get("seconds")?,
            spec: row.try_get("spec")?,
            remixed_from: row.try_get("remixed_from")?,
            progress: row.try_get("progress")?,
            attempts: row.try_get("attempts")?,
            error_code: row.try_get("error_code")?,
            error_message: row.try_get("error_message")?,
            completed_ms: row.try_get("completed_ms")?,
        })
    }
}

/// A new job to queue.
pub struct NewVideo<'a> {
    pub id: &'a str,
    pub key_id: &'a str,
    pub model: &'a str,
    pub prompt: &'a str,
    pub size: &'a str,
    pub seconds: &'a str,
    pub spec: &'a str,
    pub remixed_from: Option<&'a str>,
}

/// A stored API key (never the key itself: only its SHA-256).
#[derive(Clone, Debug)]
pub struct KeyRow {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// What a worker holds after a claim.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub video: VideoRow,
    /// The attempt this claim is (1 for the first run).
    pub attempt: i64,
}

/// The result of trying to claim a job.
pub enum Claim {
    Job(Box<Claimed>),
    /// A job whose lease ran out once too often was failed instead of run.
    Exhausted(String),
    Empty,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens (and creates where needed) the database: `DATABASE_URL`-style `postgres://…`, or
    /// SQLite at `sqlite_path` when `url` is `None`.
    pub async fn open(url: Option<&str>, sqlite_path: &Path) -> Result<Self, ServerError> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match url {
            Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                (u.to_string(), Backend::Postgres)
            }
            Some(u) if u.starts_with("sqlite:") => (u.to_string(), Backend::Sqlite),
            Some(u) => {
                return Err(ServerError::Config(format!(
                    "database URL '{}' is neither postgres://… nor sqlite:…",
                    redact(u)
                )))
            }
            None => {
                if let Some(parent) = sqlite_path.parent() {
                    std::fs::create_dir_all(parent).map_err(|e| {
                        ServerError::Config(format!("cannot create {}: {e}", parent.display()))
                    })?;
                }
                (
                    format!("sqlite://{}?mode=rwc", sqlite_path.display()),
                    Backend::Sqlite,
                )
            }
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
            .await
            .map_err(|e| {
                ServerError::Config(format!("cannot open the database {}: {e}", redact(&url)))
            })?;
        if backend == Backend::Sqlite {
            // WAL: readers never wait for the writer; kept in the file, so once is enough.
            sqlx::query("PRAGMA journal_mode=WAL")
                .execute(&pool)
                .await?;
        }
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await?;
        }
        Ok(Self { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- keys ----

    pub async fn insert_key(
        &self,
        id: &str,
        name: &str,
        hash: &str,
        prefix: &str,
    ) -> Result<(), ServerError> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, hash, prefix, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(name)
        .bind(hash)
        .bind(prefix)
        .bind(now_ms() / 1000)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The id of the live key with this hash.
    pub async fn key_by_hash(&self, hash: &str) -> Result<Option<String>, ServerError> {
        let row = sqlx::query("SELECT id FROM api_keys WHERE hash = $1 AND revoked_at IS NULL")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("id")).transpose()?)
    }

    pub async fn list_keys(&self) -> Result<Vec<KeyRow>, ServerError> {
        let rows = sqlx::query(
            "SELECT id, name, prefix, created_at, revoked_at FROM api_keys ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRow {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    prefix: r.try_get("prefix")?,
                    created_at: r.try_get("created_at")?,
                    revoked_at: r.try_get("revoked_at")?,
                })
            })
            .collect()
    }

    /// Revokes a key by id or name; false when no live key matched.
    pub async fn revoke_key(&self, id_or_name: &str) -> Result<bool, ServerError> {
        let done = sqlx::query(
            "UPDATE api_keys SET revoked_at = $1 WHERE (id = $2 OR name = $2) AND revoked_at IS NULL",
        )
        .bind(now_ms() / 1000)
        .bind(id_or_name)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    // ---- videos (API side) ----

    /// Queues a video unless its key already has `max_pending` queued or running (then
    /// `None`). The count and the insert are one statement (SQLite runs one writer at a time);
    /// on Postgres a per-key advisory lock orders concurrent inserts of one key.
    pub async fn insert_video(
        &self,
        v: &NewVideo<'_>,
        max_pending: i64,
    ) -> Result<Option<VideoRow>, ServerError> {
        let mut tx = self.pool.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1)) IS NULL AS locked")
                .bind(v.key_id)
                .fetch_one(&mut *tx)
                .await?;
        }
        let row = sqlx::query(&format!(
            "INSERT INTO videos (id, key_id, created_ms, status, model, prompt, size, seconds, spec, \
             remixed_from, progress, attempts) \
             SELECT $1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, 0, 0 \
             WHERE (SELECT COUNT(*) FROM videos WHERE key_id = $2 \
                    AND status IN ('queued', 'in_progress')) < $10 \
             RETURNING {VIDEO_COLUMNS}"
        ))
        .bind(v.id)
        .bind(v.key_id)
        .bind(now_ms())
        .bind(v.model)
        .bind(v.prompt)
        .bind(v.size)
        .bind(v.seconds)
        .bind(v.spec)
        .bind(v.remixed_from)
        .bind(max_pending)
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row.as_ref().map(VideoRow::from_row).transpose()?)
    }

    /// A key's video (None for another key's: the API answers 404 for both).
    pub async fn video(&self, key_id: &str, id: &str) -> Result<Option<VideoRow>, ServerError> {
        let row = sqlx::query(&format!(
            "SELECT {VIDEO_COLUMNS} FROM videos WHERE id = $1 AND key_id = $2"
        ))
        .bind(id)
        .bind(key_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(VideoRow::from_row).transpose()?)
    }

    /// Any key's video (workers).
    pub async fn video_any(&self, id: &str) -> Result<Option<VideoRow>, ServerError> {
        let row = sqlx::query(&format!("SELECT {VIDEO_COLUMNS} FROM videos WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(VideoRow::from_row).transpose()?)
    }

    /// One page of a key's videos, newest first (`desc`) or oldest first, after the video
    /// `after` (which must be the key's). Returns up to `limit` + 1 rows, so the caller can
    /// tell whether there are more.
    pub async fn list_videos(
        &self,
        key_id: &str,
        after: Option<&VideoRow>,
        limit: i64,
        descending: bool,
    ) -> Result<Vec<VideoRow>, ServerError> {
        let (cmp, order) = if descending {
            ("<", "DESC")
        } else {
            (">", "ASC")
        };
        let rows = match after {
            Some(a) => {
                sqlx::query(&format!(
                    "SELECT {VIDEO_COLUMNS} FROM videos WHERE key_id = $1 \
                     AND (created_ms {cmp} $2 OR (created_ms = $2 AND id {cmp} $3)) \
                     ORDER BY created_ms {order}, id {order} LIMIT $4"
                ))
                .bind(key_id)
                .bind(a.created_ms)
                .bind(a.id.as_str())
                .bind(limit + 1)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {VIDEO_COLUMNS} FROM videos WHERE key_id = $1 \
                     ORDER BY created_ms {order}, id {order} LIMIT $2"
                ))
                .bind(key_id)
                .bind(limit + 1)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter()
            .map(|r| VideoRow::from_row(r).map_err(Into::into))
            .collect()
    }

    /// Jobs of a key still waiting or running (the queue-depth limit).
    pub async fn pending_for_key(&self, key_id: &str) -> Result<i64, ServerError> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM videos WHERE key_id = $1 AND status IN ('queued', 'in_progress')",
        )
        .bind(key_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("n")?)
    }

    pub async fn delete_video(&self, key_id: &str, id: &str) -> Result<bool, ServerError> {
        let done = sqlx::query("DELETE FROM videos WHERE id = $1 AND key_id = $2")
            .bind(id)
            .bind(key_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether the database answers (the health check).
    pub async fn ping(&self) -> Result<(), ServerError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Every attempt of a video: (worker, attempt, outcome).
    pub async fn runs(
        &self,
        video_id: &str,
    ) -> Result<Vec<(String, i64, Option<String>)>, ServerError> {
        let rows = sqlx::query(
            "SELECT worker, attempt, outcome FROM runs WHERE video_id = $1 ORDER BY attempt, started_ms",
        )
        .bind(video_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("worker")?,
                    r.try_get("attempt")?,
                    r.try_get("outcome")?,
                ))
            })
            .collect()
    }

    // ---- the queue (worker side) ----

    /// Claims the oldest claimable job for `worker` (queued, or running under a lease that ran
    /// out) with a lease of `lease`. A job claimed `max_attempts` times already is failed
    /// instead, and the next one looked at.
    pub async fn claim(
        &self,
        worker: &str,
        lease: Duration,
        max_attempts: i64,
    ) -> Result<Claim, ServerError> {
        let now = now_ms();
        let pick = match self.backend {
            Backend::Postgres => {
                "SELECT id FROM videos WHERE status = 'queued' \
                 OR (status = 'in_progress' AND lease_expires_ms < $2) \
                 ORDER BY created_ms, id LIMIT 1 FOR UPDATE SKIP LOCKED"
            }
            Backend::Sqlite => {
                "SELECT id FROM videos WHERE status = 'queued' \
                 OR (status = 'in_progress' AND lease_expires_ms < $2) \
                 ORDER BY created_ms, id LIMIT 1"
            }
        };
        let row = sqlx::query(&format!(
            "UPDATE videos SET status = 'in_progress', lease_owner = $1, lease_expires_ms = $3, \
             attempts = attempts + 1, progress = 0 WHERE id = ({pick}) RETURNING {VIDEO_COLUMNS}"
        ))
        .bind(worker)
        .bind(now)
        .bind(now + lease.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(Claim::Empty);
        };
        let video = VideoRow::from_row(&row)?;
        let attempt = video.attempts;
        // The attempt before this one never reported an end: its worker died holding it.
        sqlx::query(
            "UPDATE runs SET ended_ms = $1, outcome = 'lost' WHERE video_id = $2 AND outcome IS NULL",
        )
        .bind(now)
        .bind(video.id.as_str())
        .execute(&self.pool)
        .await?;
        if attempt > max_attempts {
            let msg = format!(
                "the job was started {} times and its worker stopped answering each time",
                attempt - 1
            );
            self.fail(&video.id, worker, "worker_lost", &msg).await?;
            return Ok(Claim::Exhausted(video.id));
        }
        sqlx::query(
            "INSERT INTO runs (video_id, worker, attempt, started_ms) VALUES ($1, $2, $3, $4)",
        )
        .bind(video.id.as_str())
        .bind(worker)
        .bind(attempt)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(Claim::Job(Box::new(Claimed { video, attempt })))
    }

    /// Extends the lease and records progress; false when the lease is no longer this
    /// worker's (it expired and another worker took the job, or the job was deleted).
    pub async fn heartbeat(
        &self,
        id: &str,
        worker: &str,
        lease: Duration,
        progress: i64,
    ) -> Result<bool, ServerError> {
        let done = sqlx::query(
            "UPDATE videos SET lease_expires_ms = $1, progress = $2 \
             WHERE id = $3 AND lease_owner = $4 AND status = 'in_progress'",
        )
        .bind(now_ms() + lease.as_millis() as i64)
        .bind(progress)
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn end_run(&self, id: &str, worker: &str, outcome: &str) -> Result<(), ServerError> {
        sqlx::query(
            "UPDATE runs SET ended_ms = $1, outcome = $2 \
             WHERE video_id = $3 AND worker = $4 AND outcome IS NULL",
        )
        .bind(now_ms())
        .bind(outcome)
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks the job completed (its outputs are in place already); false when this worker no
    /// longer holds it, in which case nothing changes.
    pub async fn complete(
        &self,
        id: &str,
        worker: &str,
        seconds: &str,
        size: &str,
    ) -> Result<bool, ServerError> {
        let done = sqlx::query(
            "UPDATE videos SET status = 'completed', progress = 100, completed_ms = $1, \
             seconds = $2, size = $5, lease_owner = NULL, lease_expires_ms = NULL, \
             error_code = NULL, error_message = NULL \
             WHERE id = $3 AND lease_owner = $4 AND status = 'in_progress'",
        )
        .bind(now_ms())
        .bind(seconds)
        .bind(id)
        .bind(worker)
        .bind(size)
        .execute(&self.pool)
        .await?;
        let ok = done.rows_affected() > 0;
        self.end_run(id, worker, if ok { "completed" } else { "superseded" })
            .await?;
        Ok(ok)
    }

    /// Marks the job failed for good.
    pub async fn fail(
        &self,
        id: &str,
        worker: &str,
        code: &str,
        message: &str,
    ) -> Result<bool, ServerError> {
        let done = sqlx::query(
            "UPDATE videos SET status = 'failed', completed_ms = $1, error_code = $2, \
             error_message = $3, lease_owner = NULL, lease_expires_ms = NULL \
             WHERE id = $4 AND lease_owner = $5 AND status = 'in_progress'",
        )
        .bind(now_ms())
        .bind(code)
        .bind(message)
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        self.end_run(id, worker, "failed").await?;
        Ok(done.rows_affected() > 0)
    }

    /// Puts a job back in the queue (a retry after a failure, or a graceful shutdown);
    /// `give_back_attempt` undoes the attempt's count (shutdown is not the job's fault).
    pub async fn requeue(
        &self,
        id: &str,
        worker: &str,
        outcome: &str,
        message: Option<&str>,
        give_back_attempt: bool,
    ) -> Result<bool, ServerError> {
        let done = sqlx::query(
            "UPDATE videos SET status = 'queued', progress = 0, lease_owner = NULL, \
             lease_expires_ms = NULL, error_message = $1, \
             attempts = attempts - $2 WHERE id = $3 AND lease_owner = $4 AND status = 'in_progress'",
        )
        .bind(message)
        .bind(i64::from(give_back_attempt))
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        self.end_run(id, worker, outcome).await?;
        Ok(done.rows_affected() > 0)
    }
}

/// A database URL with any password replaced, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(None, &dir.path().join("db.sqlite"))
            .await
            .unwrap();
        (dir, s)
    }

    fn new_video<'a>(id: &'a str, key: &'a str) -> NewVideo<'a> {
        NewVideo {
            id,
            key_id: key,
            model: "m",
            prompt: "p",
            size: "64x64",
            seconds: "2",
            spec: "{}",
            remixed_from: None,
        }
    }

    #[tokio::test]
    async fn a_lost_lease_is_claimed_again_and_the_old_worker_cannot_complete() {
        let (_d, s) = store().await;
        s.insert_video(&new_video("v1", "k"), 10)
            .await
            .unwrap()
            .unwrap();
        let short = Duration::from_millis(1);
        let Claim::Job(a) = s.claim("a", short, 3).await.unwrap() else {
            panic!("nothing claimed")
        };
        assert_eq!(a.attempt, 1);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let Claim::Job(b) = s.claim("b", Duration::from_secs(60), 3).await.unwrap() else {
            panic!("the expired lease was not claimed again")
        };
        assert_eq!(b.attempt, 2);
        assert!(!s.heartbeat("v1", "a", short, 50).await.unwrap());
        assert!(!s.complete("v1", "a", "2", "64x64").await.unwrap());
        assert!(s.complete("v1", "b", "2", "64x64").await.unwrap());
        let runs = s.runs("v1").await.unwrap();
        assert_eq!(
            runs,
            vec![
                ("a".into(), 1, Some("lost".into())),
                ("b".into(), 2, Some("completed".into()))
            ]
        );
        assert!(matches!(
            s.claim("c", short, 3).await.unwrap(),
            Claim::Empty
        ));
    }

    #[tokio::test]
    async fn a_job_out_of_attempts_fails_with_the_reason() {
        let (_d, s) = store().await;
        s.insert_video(&new_video("v1", "k"), 10)
            .await
            .unwrap()
            .unwrap();
        for _ in 0..2 {
            assert!(matches!(
                s.claim("w", Duration::ZERO, 2).await.unwrap(),
                Claim::Job(_)
            ));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        assert!(matches!(
            s.claim("w", Duration::ZERO, 2).await.unwrap(),
            Claim::Exhausted(_)
        ));
        let v = s.video("v1", "k").await.unwrap();
        assert!(v.is_none(), "another key's video must not be visible");
        let v = s.video_any("v1").await.unwrap().unwrap();
        assert_eq!(v.status, "failed");
        assert_eq!(v.error_code.as_deref(), Some("worker_lost"));
        assert!(v.error_message.unwrap().contains("2 times"));
    }

    #[tokio::test]
    async fn pages_follow_each_other_without_gaps_or_repeats() {
        let (_d, s) = store().await;
        for i in 0..7 {
            s.insert_video(&new_video(&format!("v{i}"), "k"), 100)
                .await
                .unwrap()
                .unwrap();
        }
        s.insert_video(&new_video("other", "k2"), 100)
            .await
            .unwrap()
            .unwrap();
        // The per-key limit counts queued and running jobs only.
        assert!(s
            .insert_video(&new_video("over", "k"), 7)
            .await
            .unwrap()
            .is_none());
        assert!(s
            .insert_video(&new_video("ok", "k2"), 2)
            .await
            .unwrap()
            .is_some());
        for desc in [false, true] {
            let mut seen = Vec::new();
            let mut after: Option<VideoRow> = None;
            loop {
                let mut page = s.list_videos("k", after.as_ref(), 3, desc).await.unwrap();
                let more = page.len() > 3;
                page.truncate(3);
                seen.extend(page.iter().map(|v| v.id.clone()));
                after = page.last().cloned();
                if !more {
                    break;
                }
            }
            // The same rows, in the same order, as one page of everything.
            let all = s.list_videos("k", None, 100, desc).await.unwrap();
            let want: Vec<String> = all.iter().map(|v| v.id.clone()).collect();
            assert_eq!(seen, want);
            assert_eq!(seen.len(), 7);
            let created: Vec<i64> = all.iter().map(|v| v.created_ms).collect();
            let mut sorted = created.clone();
            sorted.sort();
            if desc {
                sorted.reverse();
            }
            assert_eq!(created, sorted, "not in creation order");
        }
    }

    #[test]
    fn passwords_are_kept_out_of_messages() {
        assert_eq!(
            redact("postgres://zoe:secret@localhost/db"),
            "postgres://zoe:***@localhost/db"
        );
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
