//! `zoetrope serve`, `zoetrope worker` and `zoetrope keys`: flags over zoetrope-server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use zoetrope_engine::LoadOptions;
use zoetrope_server::{Limits, Models, QueueConfig, ServeConfig};

use crate::args::{DeviceArg, Dtype};

/// Where the queue is: shared by serve, worker and keys.
#[derive(Args, Clone)]
pub struct QueueArgs {
    /// Outputs, uploads and the SQLite queue [default: $XDG_DATA_HOME/zoetrope, or
    /// ~/.local/share/zoetrope]. Workers on other machines need the same folder (a shared
    /// filesystem) and the same --database-url.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// postgres://USER:PASSWORD@HOST/DB for many workers on many machines (claims use FOR
    /// UPDATE SKIP LOCKED), or sqlite:PATH [default: DATA_DIR/queue.sqlite].
    #[arg(long, env = "DATABASE_URL", value_name = "URL", hide_env_values = true)]
    database_url: Option<String>,
}

impl QueueArgs {
    fn data_dir(&self) -> anyhow::Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return Ok(PathBuf::from(x).join("zoetrope"));
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .context("no --data-dir and no HOME: give --data-dir DIR")?;
        Ok(PathBuf::from(home).join(".local/share/zoetrope"))
    }

    fn queue(&self) -> anyhow::Result<QueueConfig> {
        let mut q = QueueConfig::new(self.data_dir()?);
        q.database_url = self.database_url.clone();
        Ok(q)
    }
}

/// Which models to load and how jobs run: shared by serve and worker.
#[derive(Args, Clone)]
pub struct RunArgs {
    /// A model folder under a name for the API's `model` field, e.g.
    /// wan-1.3b=/models/Wan2.1-T2V-1.3B-Diffusers (repeatable).
    #[arg(long = "model", value_name = "NAME=DIR", value_parser = zoetrope_server::models::parse_named)]
    models: Vec<(String, PathBuf)>,
    /// Load every model folder directly under DIR, named by its folder (repeatable).
    #[arg(long, value_name = "DIR")]
    model_dir: Vec<PathBuf>,
    /// Leave out the built-in world model (`zoetrope-world`, otherwise the default).
    #[arg(long)]
    no_builtin: bool,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    #[command(flatten)]
    device: DeviceArg,
    /// Seconds a running job stays a worker's without a heartbeat; a killed worker's job runs
    /// again after this.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    lease_seconds: f64,
    /// Runs of a job before it fails for good (its worker lost, or an internal error).
    #[arg(long, default_value_t = 3)]
    max_attempts: i64,
    /// On shutdown, seconds running jobs get to finish before going back to the queue.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    shutdown_grace: f64,
}

impl RunArgs {
    fn models(&self) -> anyhow::Result<Arc<Models>> {
        let opts = LoadOptions {
            precision: self.dtype.into(),
            device: self.device.device,
            ..LoadOptions::default()
        };
        Ok(Arc::new(Models::load(
            !self.no_builtin,
            &self.models,
            &self.model_dir,
            &opts,
        )?))
    }

    fn apply(&self, q: &mut QueueConfig) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.lease_seconds.is_finite() && self.lease_seconds >= 1.0,
            "--lease-seconds must be at least 1"
        );
        anyhow::ensure!(self.max_attempts >= 1, "--max-attempts must be at least 1");
        q.lease = Duration::from_secs_f64(self.lease_seconds);
        q.max_attempts = self.max_attempts;
        Ok(())
    }

    fn grace(&self) -> anyhow::Result<Duration> {
        anyhow::ensure!(
            self.shutdown_grace.is_finite() && self.shutdown_grace >= 0.0,
            "--shutdown-grace must be 0 or more seconds"
        );
        Ok(Duration::from_secs_f64(self.shutdown_grace))
    }
}

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Jobs run at once in this process (0: only `zoetrope worker` processes run jobs).
    #[arg(long, default_value_t = 1)]
    workers: usize,
    #[command(flatten)]
    queue: QueueArgs,
    #[command(flatten)]
    run: RunArgs,
    /// Largest request body in MiB (uploads included).
    #[arg(long, default_value_t = 32)]
    max_body_mib: usize,
    /// Jobs one key may have queued or running at once (more get 429).
    #[arg(long, default_value_t = 16)]
    max_queued_per_key: i64,
    /// Largest width × height × frames of one job.
    #[arg(long, default_value_t = Limits::default().max_pixel_frames)]
    max_pixel_frames: u64,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Jobs run at once in this process.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    #[command(flatten)]
    queue: QueueArgs,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Make an API key; it is printed once and stored only as a hash.
    Create {
        /// Who or what the key is for (unique among live keys).
        #[arg(long)]
        name: String,
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// List keys (names, ids, first characters; never the keys).
    List {
        #[command(flatten)]
        queue: QueueArgs,
    },
    /// Revoke a key by id or name: its requests get 401 from then on.
    Revoke {
        id_or_name: String,
        #[command(flatten)]
        queue: QueueArgs,
    },
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Runs `fut` and then leaves without waiting for generation threads that cannot be stopped
/// (their jobs are back in the queue by then).
fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(fut: F) -> anyhow::Result<()> {
    let rt = runtime()?;
    let res = rt.block_on(fut);
    rt.shutdown_timeout(Duration::from_millis(500));
    res
}

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut queue = args.queue.queue()?;
    args.run.apply(&mut queue)?;
    let cfg = ServeConfig {
        addr: args.addr,
        queue,
        limits: Limits {
            max_body_bytes: args.max_body_mib.max(1) << 20,
            max_pixel_frames: args.max_pixel_frames,
            max_pending_per_key: args.max_queued_per_key.max(1),
            ..Limits::default()
        },
        workers: args.workers,
        shutdown_grace: args.run.grace()?,
    };
    let models = args.run.models()?;
    block_on(zoetrope_server::serve(cfg, models))
}

pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let mut queue = args.queue.queue()?;
    args.run.apply(&mut queue)?;
    let grace = args.run.grace()?;
    let models = args.run.models()?;
    block_on(zoetrope_server::run_worker(queue, models, args.jobs, grace))
}

pub fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    block_on(async move {
        match cmd {
            KeysCommand::Create { name, queue } => {
                let store = queue.queue()?.open_store().await?;
                let (id, secret) = zoetrope_server::keys::create(&store, &name).await?;
                eprintln!("made key {id} ({name}); it is shown only now:");
                println!("{secret}");
            }
            KeysCommand::List { queue } => {
                let store = queue.queue()?.open_store().await?;
                let keys = zoetrope_server::keys::list(&store).await?;
                if keys.is_empty() {
                    eprintln!("no keys yet: zoetrope keys create --name NAME");
                }
                for k in keys {
                    let state = match k.revoked_at {
                        Some(_) => "revoked",
                        None => "live",
                    };
                    println!(
                        "{}\t{}\t{}…\t{}\tcreated {}",
                        k.id, k.name, k.prefix, state, k.created_at
                    );
                }
            }
            KeysCommand::Revoke { id_or_name, queue } => {
                let store = queue.queue()?.open_store().await?;
                zoetrope_server::keys::revoke(&store, &id_or_name).await?;
                eprintln!("revoked {id_or_name}");
            }
        }
        Ok(())
    })
}
