"""Benchmark of `zoetrope serve` on the built-in model (a bench, not a test).

    python3 tools/bench/serve_bench.py [--zoetrope target/release/zoetrope] [--clients 50]

Starts its own server (SQLite queue, one in-process worker) in a temporary data dir and prints:
1. API latency under load: `wrk` (Debian's) with CLIENTS connections on GET /v1/videos/{id}
   and on GET /v1/videos?limit=20, while the worker is generating: requests/s, p50, p99;
2. job throughput: CLIENTS clients (threads, one key each) submit JOBS_PER_CLIENT jobs each and
   poll until all are done: jobs/s, p50/p99 of create and retrieve calls;
3. the server's overhead over the CLI for one clip: `zoetrope generate` vs create + poll (every
   20 ms) on an idle server, alternately, medians and the ratio.
Everything shares this machine's cores (server, worker, clients), as it would on one box.
"""

import argparse
import http.client
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

PROMPT = "a red ball bounces to the right on a black background"


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


class Api:
    """One keep-alive connection."""

    def __init__(self, addr, key):
        host, port = addr.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)
        self.headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}

    def call(self, method, path, body=None):
        t = time.perf_counter()
        self.conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=self.headers)
        res = self.conn.getresponse()
        data = res.read()
        dt = time.perf_counter() - t
        if res.status != 200:
            raise RuntimeError(f"{method} {path}: {res.status} {data[:200]!r}")
        return json.loads(data) if data[:1] == b"{" else data, dt


def start_server(zoetrope, data, workers=1):
    proc = subprocess.Popen(
        [zoetrope, "serve", "--addr", "127.0.0.1:0", "--data-dir", data, "--workers", str(workers),
         "--max-queued-per-key", "100000"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    m = re.search(r"http://(\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"serve did not start: {line!r}")
    return proc, m.group(1)


def make_key(zoetrope, data, name):
    return subprocess.check_output([zoetrope, "keys", "create", "--name", name, "--data-dir", data],
                                   stderr=subprocess.DEVNULL, text=True).strip()


def wait_done(api, vid, poll=0.02):
    lat = []
    while True:
        v, dt = api.call("GET", f"/v1/videos/{vid}")
        lat.append(dt)
        if v["status"] in ("completed", "failed"):
            if v["status"] == "failed":
                raise RuntimeError(f"{vid} failed: {v['error']}")
            return lat
        time.sleep(poll)


def wrk(addr, key, path, clients, seconds):
    out = subprocess.check_output(
        ["wrk", "-t2", f"-c{clients}", f"-d{seconds}s", "--latency", "-H", f"Authorization: Bearer {key}",
         f"http://{addr}{path}"], text=True)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, lat.get("50"), lat.get("99"), int(non2xx.group(1)) if non2xx else 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--zoetrope", default="target/release/zoetrope")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--jobs-per-client", type=int, default=2)
    ap.add_argument("--wrk-seconds", type=int, default=10)
    ap.add_argument("--overhead-runs", type=int, default=5)
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("needs wrk: apt-get install wrk")
    data = tempfile.mkdtemp(prefix="zoetrope-bench-")
    proc, addr = start_server(args.zoetrope, data)
    try:
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
        print(f"machine: {cpu}, {os.cpu_count()} cores; server {addr}, SQLite queue, 1 in-process worker")

        # 3 first, on an idle server: the overhead for one clip.
        key0 = make_key(args.zoetrope, data, "solo")
        api = Api(addr, key0)
        cli, srv = [], []
        out = os.path.join(data, "cli.mp4")
        for i in range(args.overhead_runs):
            t = time.perf_counter()
            subprocess.run([args.zoetrope, "generate", PROMPT, "--seed", str(i), "-o", out],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            cli.append(time.perf_counter() - t)
            t = time.perf_counter()
            v, _ = api.call("POST", "/v1/videos", {"prompt": PROMPT, "seed": i})
            wait_done(api, v["id"])
            api.call("GET", f"/v1/videos/{v['id']}/content")
            srv.append(time.perf_counter() - t)
        c, s = statistics.median(cli), statistics.median(srv)
        print(f"one clip (64x64, 17 frames): CLI {c:.3f} s (process start + model load + generate + MP4), "
              f"server {s:.3f} s (create + poll every 20 ms + download), server/CLI {s / c:.2f}x, "
              f"medians of {args.overhead_runs}")

        # 1: API latency while the worker is busy.
        busy = [api.call("POST", "/v1/videos", {"prompt": PROMPT, "seed": 100 + i})[0]["id"] for i in range(20)]
        for name, path in [("retrieve", f"/v1/videos/{busy[0]}"), ("list", "/v1/videos?limit=20")]:
            rps, p50, p99, bad = wrk(addr, key0, path, args.clients, args.wrk_seconds)
            print(f"API {name} under load ({args.clients} connections, worker generating): "
                  f"{rps:.0f} req/s, p50 {p50}, p99 {p99}, non-2xx {bad}")
        for vid in busy:
            wait_done(api, vid, poll=0.2)

        # 2: job throughput with many clients.
        keys = [make_key(args.zoetrope, data, f"client{i}") for i in range(args.clients)]
        creates, retrieves, errors = [], [], []
        lock = threading.Lock()

        def client(key, n):
            try:
                a = Api(addr, key)
                ids = []
                for j in range(args.jobs_per_client):
                    v, dt = a.call("POST", "/v1/videos", {"prompt": PROMPT, "seed": n * 100 + j})
                    ids.append(v["id"])
                    with lock:
                        creates.append(dt)
                for vid in ids:
                    lat = wait_done(a, vid, poll=0.5)
                    with lock:
                        retrieves.extend(lat)
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(repr(e))

        t = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k, i)) for i, k in enumerate(keys)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        jobs = args.clients * args.jobs_per_client
        if errors:
            raise SystemExit(f"{len(errors)} clients failed: {errors[:3]}")
        print(f"throughput: {jobs} jobs from {args.clients} clients in {wall:.1f} s = {jobs / wall:.2f} jobs/s; "
              f"create p50 {1000 * pct(creates, 50):.1f} ms p99 {1000 * pct(creates, 99):.1f} ms; "
              f"retrieve p50 {1000 * pct(retrieves, 50):.1f} ms p99 {1000 * pct(retrieves, 99):.1f} ms "
              f"({len(retrieves)} polls)")
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
