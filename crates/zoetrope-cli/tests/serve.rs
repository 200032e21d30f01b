//! `zoetrope serve` with real parts: the real binary on a real port, the pinned `openai` SDK,
//! worker processes killed with SIGKILL, a real Postgres, and a thousand malformed requests.
//!
//! The SDK and Postgres checks need Python with tools/server/requirements.txt (set
//! ZOETROPE_PYTHON to that interpreter) and Debian's `postgresql`; without them they are
//! skipped with a notice, except under CI (`CI` set), where .ci/run installs both.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_zoetrope");

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Server {
    _proc: Proc,
    addr: SocketAddr,
    stderr: PathBuf,
}

impl Server {
    /// Starts `zoetrope serve` on a free port and waits for its address line.
    fn start(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        let stderr = data.join(format!("serve-{}.log", rand::random::<u32>()));
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--addr", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "no address from serve: {line:?}\n{}",
                    std::fs::read_to_string(&stderr).unwrap_or_default()
                )
            });
        Server {
            _proc: Proc(child),
            addr,
            stderr,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

fn key(data: &Path, name: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(BIN);
    cmd.args(["keys", "create", "--name", name, "--data-dir"])
        .arg(data);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn worker(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(["worker", "--data-dir"])
        .arg(data)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().unwrap())
}

/// One raw HTTP/1.1 exchange: status and body. The connection is closed after it.
fn raw(addr: SocketAddr, request: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // The server may answer (413) and close before reading a huge body: a failed write is fine.
    let _ = s.write_all(request);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no HTTP response to {:?}: {text:?}",
                String::from_utf8_lossy(&request[..request.len().min(200)])
            )
        });
    let body = match buf.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => buf[i + 4..].to_vec(),
        None => Vec::new(),
    };
    (status, body)
}

fn request(
    method: &str,
    path: &str,
    key: Option<&str>,
    ctype: Option<&str>,
    body: &[u8],
) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(k) = key {
        r += &format!("Authorization: Bearer {k}\r\n");
    }
    if let Some(c) = ctype {
        r += &format!("Content-Type: {c}\r\n");
    }
    r += &format!("Content-Length: {}\r\n\r\n", body.len());
    let mut bytes = r.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let ctype = (!body.is_empty()).then_some("application/json");
    let (status, bytes) = raw(
        addr,
        &request(method, path, Some(key), ctype, body.as_bytes()),
    );
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

fn create(addr: SocketAddr, key: &str, body: Value) -> String {
    let (status, v) = call(addr, "POST", "/v1/videos", key, Some(body));
    assert_eq!(status, 200, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// Waits until every video is completed (panics on a failed one or at the deadline).
fn wait_all(
    addr: SocketAddr,
    key: &str,
    ids: &[String],
    deadline: Duration,
    log: &dyn Fn() -> String,
) {
    let start = Instant::now();
    loop {
        let mut done = 0;
        for id in ids {
            let (_, v) = call(addr, "GET", &format!("/v1/videos/{id}"), key, None);
            match v["status"].as_str() {
                Some("completed") => done += 1,
                Some("failed") => panic!("{id} failed: {v}\n{}", log()),
                _ => {}
            }
        }
        if done == ids.len() {
            return;
        }
        assert!(
            start.elapsed() < deadline,
            "{done}/{} completed after {deadline:?}\n{}",
            ids.len(),
            log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Each video's attempts, read from the queue's own tables: exactly one may be `completed`.
fn assert_completed_once(url: Option<&str>, data: &Path, ids: &[String]) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = zoetrope_server::Store::open(url, &data.join("queue.sqlite"))
            .await
            .unwrap();
        let mut lost = 0;
        for id in ids {
            let runs = store.runs(id).await.unwrap();
            let completed = runs
                .iter()
                .filter(|r| r.2.as_deref() == Some("completed"))
                .count();
            assert_eq!(completed, 1, "{id} completed {completed} times: {runs:?}");
            lost += runs
                .iter()
                .filter(|r| r.2.as_deref() == Some("lost"))
                .count();
        }
        store.close().await;
        lost
    })
}

/// The first video seen running with some progress.
fn wait_running(addr: SocketAddr, key: &str, ids: &[String]) -> String {
    let start = Instant::now();
    loop {
        for id in ids {
            let (_, v) = call(addr, "GET", &format!("/v1/videos/{id}"), key, None);
            if v["status"] == "in_progress" && v["progress"].as_i64().unwrap_or(0) >= 10 {
                return id.clone();
            }
        }
        assert!(start.elapsed() < Duration::from_secs(120), "no job started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A check whose parts are missing: a failure under CI, a notice elsewhere.
fn skip(what: &str, install: &str) {
    let ci = std::env::var_os("CI").is_some_and(|v| !v.is_empty());
    assert!(!ci, "CI must run the {what} check: {install}");
    eprintln!("skipped: {what} is not available ({install})");
}

/// A job long enough to be caught mid-run on a slow machine.
fn slow_job(i: usize) -> Value {
    json!({"prompt": "a red ball bounces to the right on a black background", "seed": i, "steps": 40})
}

#[test]
fn a_worker_killed_mid_job_loses_nothing_and_runs_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let server = Server::start(data, &["--workers", "0"], &[]);
    let k = key(data, "alice", &[]);
    let lease = ["--lease-seconds", "2"];
    let a = worker(data, &lease, &[]);
    let ids: Vec<String> = (0..5)
        .map(|i| create(server.addr, &k, slow_job(i)))
        .collect();
    let running = wait_running(server.addr, &k, &ids);
    // SIGKILL: no shutdown code runs; only the lease can give the job back.
    let mut a = a;
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let _b = worker(data, &lease, &[]);
    wait_all(server.addr, &k, &ids, Duration::from_secs(300), &|| {
        server.log()
    });
    let lost = assert_completed_once(None, data, &ids);
    assert_eq!(
        lost, 1,
        "the killed worker's job ({running}) must show one lost attempt"
    );
    for id in &ids {
        let (status, _) = raw(
            server.addr,
            &request(
                "GET",
                &format!("/v1/videos/{id}/content"),
                Some(&k),
                None,
                b"",
            ),
        );
        assert_eq!(status, 200);
        let mp4 = zoetrope_server::video_dir(data, id).join("video.mp4");
        let clip = zoetrope_video::read_video(&mp4).unwrap();
        assert_eq!(clip.len(), 17);
    }
    drop(server);
}

/// SIGTERM: the server stops taking jobs, lets the running one have its grace period (none
/// here), puts it back in the queue without counting the attempt, and exits; restarted, it
/// finishes everything.
#[test]
fn a_graceful_shutdown_puts_the_running_job_back_and_a_restart_finishes_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let args = ["--shutdown-grace", "0"];
    let server = Server::start(data, &args, &[]);
    let k = key(data, "alice", &[]);
    let ids: Vec<String> = (0..2)
        .map(|i| create(server.addr, &k, slow_job(i)))
        .collect();
    let running = wait_running(server.addr, &k, &ids);
    let pid = server._proc.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut server = server;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = server._proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "serve did not exit on SIGTERM\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{}", server.log());
    assert!(
        server.log().contains("put back in the queue"),
        "{}",
        server.log()
    );
    let server = Server::start(data, &args, &[]);
    wait_all(server.addr, &k, &ids, Duration::from_secs(300), &|| {
        server.log()
    });
    assert_completed_once(None, data, &ids);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let runs = rt.block_on(async {
        let store = zoetrope_server::Store::open(None, &data.join("queue.sqlite"))
            .await
            .unwrap();
        let runs = store.runs(&running).await.unwrap();
        store.close().await;
        runs
    });
    let outcomes: Vec<_> = runs.iter().map(|r| (r.1, r.2.as_deref())).collect();
    // The interrupted attempt was handed back, so the rerun is attempt 1 again.
    assert_eq!(
        outcomes,
        [(1, Some("shutdown")), (1, Some("completed"))],
        "{runs:?}"
    );
}

#[test]
fn the_openai_sdk_drives_the_whole_api() {
    let python = python();
    let ok = Command::new(&python)
        .args([
            "-c",
            "import openai; assert openai.__version__ == '3.51.0', openai.__version__",
        ])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        skip(
            "openai SDK",
            "pip install -r tools/server/requirements.txt, then set ZOETROPE_PYTHON",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let (k1, k2) = (key(dir.path(), "alice", &[]), key(dir.path(), "bob", &[]));
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/server/sdk_check.py"
    );
    let out = Command::new(&python)
        .arg(script)
        .arg(format!("http://{}/v1", server.addr))
        .args([&k1, &k2])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("SDK CHECK PASSED"),
        "{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}

/// The page at `/` in headless Chromium through chromedriver: submit, watch, play, delete.
/// With ZOETROPE_SCREENSHOT=PATH it also saves a screenshot (the README's).
#[test]
fn the_web_page_makes_plays_and_deletes_a_video_in_chromium() {
    let python = python();
    let have = |c: &str| {
        Command::new(c)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let selenium = Command::new(&python)
        .args(["-c", "import selenium"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !(have("chromium") && have("chromedriver") && selenium) {
        skip(
            "web page",
            "apt-get install chromium chromium-driver; pip install -r tools/server/requirements.txt",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[], &[]);
    let k = key(dir.path(), "alice", &[]);
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/server/page_check.py"
    );
    let mut cmd = Command::new(&python);
    cmd.arg(script)
        .arg(format!("http://{}", server.addr))
        .arg(&k);
    if let Some(shot) = std::env::var_os("ZOETROPE_SCREENSHOT") {
        cmd.arg(shot);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("PAGE CHECK PASSED"),
        "{stdout}\n{}\nserver:\n{}",
        String::from_utf8_lossy(&out.stderr),
        server.log()
    );
}

fn python() -> String {
    std::env::var("ZOETROPE_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// A thousand bad requests: each gets a 4xx in OpenAI's error shape, none a 5xx, nothing
/// panics, and the server still does real work afterwards.
#[test]
fn a_thousand_malformed_requests_get_4xx_and_the_server_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let server = Server::start(
        data,
        &["--max-body-mib", "1", "--max-queued-per-key", "2"],
        &[],
    );
    let k = key(data, "alice", &[]);
    let other = key(data, "mallory", &[]);
    let revoked = key(data, "old", &[]);
    let out = Command::new(BIN)
        .args(["keys", "revoke", "old", "--data-dir"])
        .arg(data)
        .output()
        .unwrap();
    assert!(out.status.success());
    // One real video of alice's, to aim at with other keys and bad paths.
    let mine = create(
        server.addr,
        &k,
        json!({"prompt": "a red ball bounces to the right on a black background"}),
    );
    wait_all(
        server.addr,
        &k,
        std::slice::from_ref(&mine),
        Duration::from_secs(120),
        &|| server.log(),
    );

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let json_ct = Some("application/json");
    let prompt = "a red ball bounces to the right on a black background";
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..1000 {
        let junk: String = (0..rng.random_range(1..40))
            .map(|_| rng.random_range(b' '..=b'~') as char)
            .collect();
        let n: i64 = rng.random_range(-5..100_000);
        let req: Vec<u8> = match i % 25 {
            0 => request("POST", "/v1/videos", Some(&k), json_ct, junk.as_bytes()),
            1 => request("POST", "/v1/videos", Some(&k), json_ct, br#"{"prompt": "a ball", "#),
            2 => request("POST", "/v1/videos", Some(&k), json_ct, json!({"prompt": n}).to_string().as_bytes()),
            3 => request("POST", "/v1/videos", Some(&k), json_ct, json!({"prompt": [prompt]}).to_string().as_bytes()),
            4 => request("POST", "/v1/videos", Some(&k), json_ct, json!({"prompt": prompt, "seconds": junk}).to_string().as_bytes()),
            5 => request("POST", "/v1/videos", Some(&k), json_ct, json!({"prompt": prompt, "size": format!("{n}x{junk}")}).to_string().as_bytes()),
            6 => request("POST", "/v1/videos", Some(&k), json_ct, json!({"prompt": prompt, "size": format!("{}x64", 8 * (n % 50) + 1)}).to_string().as_bytes()),
            7 => request("POST", "/v1/videos", Some(&k), json_ct, json!({"prompt": prompt, "seed": -n - 1}).to_string().as_bytes()),
            8 => request("POST", "/v1/videos", Some(&k), json_ct, json!({"prompt": prompt, "steps": 0, "guidance": "lots"}).to_string().as_bytes()),
            9 => request("POST", "/v1/videos", Some(&k), json_ct, json!({"prompt": prompt, "mode": junk}).to_string().as_bytes()),
            10 => request("POST", "/v1/videos", Some(&k), json_ct, json!({"prompt": prompt, "mode": "extend", "video_id": format!("video_{junk}")}).to_string().as_bytes()),
            11 => request("POST", "/v1/videos", Some(&k), json_ct, json!({"prompt": prompt, "input_reference": {"image_url": format!("data:image/png;base64,{junk}")}}).to_string().as_bytes()),
            12 => request("POST", "/v1/videos", Some(&k), json_ct, json!({"prompt": prompt, junk.clone(): 1}).to_string().as_bytes()),
            13 => {
                // Over the 1 MiB body limit.
                let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(1_100_000 + (n as usize % 1000)));
                request("POST", "/v1/videos", Some(&k), json_ct, big.as_bytes())
            }
            14 => request("POST", "/v1/videos", Some(&k), Some("multipart/form-data; boundary=XYZ"), format!("--XYZ\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n{junk}").as_bytes()),
            15 => request("POST", "/v1/videos", Some(&k), Some("multipart/form-data"), b"prompt=x"),
            16 => request("POST", "/v1/videos", Some(&k), Some("text/plain"), prompt.as_bytes()),
            17 => request("GET", &format!("/v1/videos/{mine}"), Some(&other), None, b""),
            18 => request("GET", &format!("/v1/videos/{mine}/content"), Some(&revoked), None, b""),
            19 => request("DELETE", &format!("/v1/videos/{mine}"), None, None, b""),
            20 => {
                let path = ["/v1/videos/..%2F..%2Fetc%2Fpasswd", "/v1/videos/video_%00", "/v1/videos/%ff%fe/content"][i % 3];
                request("GET", path, Some(&k), None, b"")
            }
            21 => request("GET", &format!("/v1/videos?limit={junk}&order={n}"), Some(&k), None, b""),
            22 => request("GET", &format!("/v1/videos/{mine}/content?variant={}", junk.replace(['&', '#', ' '], "")), Some(&k), None, b""),
            23 => request("PUT", "/v1/videos", Some(&k), json_ct, b"{}"),
            _ => {
                let mut r = format!("POST /v1/videos HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {k}\r\nContent-Length: 5\r\n\r\n").into_bytes();
                if i % 2 == 0 {
                    r = format!("{junk}\r\n\r\n").into_bytes();
                }
                r.extend_from_slice(b"{\"a\":");
                r
            }
        };
        let (status, body) = raw(server.addr, &req);
        *counts.entry(status).or_default() += 1;
        assert!(
            (400..500).contains(&status),
            "request {i} (kind {}) got {status}: {}\n{}",
            i % 25,
            String::from_utf8_lossy(&body),
            server.log()
        );
        // Every answer from zoetrope's own code is OpenAI's error JSON (hyper answers a
        // request line it cannot parse before any route runs, with an empty body).
        if !body.is_empty() {
            let v: Value = serde_json::from_slice(&body).unwrap_or_else(|_| {
                panic!(
                    "kind {}: not JSON: {}",
                    i % 25,
                    String::from_utf8_lossy(&body)
                )
            });
            assert!(v["error"]["message"].is_string(), "{v}");
        }
    }
    eprintln!("statuses: {counts:?}");
    assert!(
        counts.len() >= 5,
        "the requests should hit many different checks: {counts:?}"
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
    // Still answering, and still working.
    let (status, _) = raw(server.addr, &request("GET", "/healthz", None, None, b""));
    assert_eq!(status, 200);
    let id = create(server.addr, &k, json!({"prompt": prompt}));
    wait_all(server.addr, &k, &[id], Duration::from_secs(120), &|| {
        server.log()
    });
}

#[test]
fn the_queue_depth_of_a_key_is_limited_and_the_page_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &["--workers", "0", "--max-queued-per-key", "2"],
        &[],
    );
    let k = key(dir.path(), "alice", &[]);
    let other = key(dir.path(), "bob", &[]);
    let body = json!({"prompt": "a red ball bounces to the right on a black background"});
    create(server.addr, &k, body.clone());
    create(server.addr, &k, body.clone());
    let (status, v) = call(server.addr, "POST", "/v1/videos", &k, Some(body.clone()));
    assert_eq!(status, 429, "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_exceeded");
    // Another key has its own allowance.
    create(server.addr, &other, body);
    let (status, page) = raw(server.addr, &request("GET", "/", None, None, b""));
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("<title>zoetrope</title>"));
}

/// Postgres: two worker processes share 20 jobs through `FOR UPDATE SKIP LOCKED`; one is
/// killed mid-job and replaced; every job completes exactly once.
#[test]
fn on_postgres_two_workers_share_twenty_jobs_and_survive_a_kill() {
    let Some(pg) = Postgres::start() else {
        skip("Postgres", "apt-get install postgresql");
        return;
    };
    let url = pg.url();
    let env = [("DATABASE_URL", url.as_str())];
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let server = Server::start(
        data,
        &["--workers", "0", "--max-queued-per-key", "20"],
        &env,
    );
    let k = key(data, "alice", &env);
    let lease = ["--lease-seconds", "2"];
    let mut a = worker(data, &lease, &env);
    let _b = worker(data, &lease, &env);
    let ids: Vec<String> = (0..20)
        .map(|i| {
            create(
                server.addr,
                &k,
                json!({"prompt": "a blue square moves down on a white background", "seed": i}),
            )
        })
        .collect();
    wait_running(server.addr, &k, &ids);
    a.0.kill().unwrap();
    a.0.wait().unwrap();
    let _c = worker(data, &lease, &env);
    wait_all(server.addr, &k, &ids, Duration::from_secs(600), &|| {
        server.log()
    });
    assert_completed_once(Some(&url), data, &ids);
    // Both the SQLite file and Postgres cannot both be in use: nothing went to SQLite.
    assert!(!data.join("queue.sqlite").exists());
}

/// A throwaway Postgres cluster in a temporary folder, on a free port.
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    bin: PathBuf,
}

impl Postgres {
    fn start() -> Option<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .find(|b| b.join("initdb").is_file())?;
        let dir = tempfile::tempdir().unwrap();
        let root = is_root();
        if root {
            // Postgres refuses to run as root: the cluster belongs to the postgres user.
            Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .ok()?;
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pg = Postgres { dir, port, bin };
        let data = pg.dir.path().join("data");
        let ok = pg
            .as_pg(&[
                "initdb",
                "-A",
                "trust",
                "-U",
                "postgres",
                "-D",
                data.to_str()?,
            ])
            .ok()?;
        assert!(ok, "initdb failed");
        let opts = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            pg.dir.path().display()
        );
        let log = pg.dir.path().join("pg.log");
        let ok = pg
            .as_pg(&[
                "pg_ctl",
                "-D",
                data.to_str()?,
                "-l",
                log.to_str()?,
                "-o",
                &opts,
                "-w",
                "start",
            ])
            .ok()?;
        assert!(
            ok,
            "pg_ctl start failed: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Some(pg)
    }

    fn as_pg(&self, args: &[&str]) -> std::io::Result<bool> {
        let exe = self.bin.join(args[0]);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        let out = cmd.args(&args[1..]).current_dir(self.dir.path()).output()?;
        if !out.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(out.status.success())
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = self.as_pg(&[
            "pg_ctl",
            "-D",
            data.to_str().unwrap(),
            "-m",
            "immediate",
            "stop",
        ]);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0"))
        .unwrap_or(false)
}
