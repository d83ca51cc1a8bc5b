"""Benchmark: the search driver at cluster scale, on a simulated many-GPU cluster on this machine.

    python -m benchmarks.cluster_scale --trials 100 300 1000 --concurrent 64 --out docs/data/cluster-scale.json
    python -m benchmarks.cluster_scale --plot docs/data/cluster-scale.json --img docs/img/cluster-scale.png
    python -m benchmarks.cluster_scale --trials 60 --concurrent 16 --epoch-s 1 --backends sqlite   # small

Where it sits: around the whole search. A loopback Ray cluster (`LoopbackCluster`: a head with no
CPU or GPU and nodes that declare `--gpus-per-node` GPUs each, own temp dir and ports, stopped by
process id) runs the real driver (`search/run.py` under `benchmarks/cluster_probes.py`) with the
real searcher, ASHA, MLflow tracker and Optuna RDB study, on simulated trials
(`configs/simulated.toml`, `trainables.simulated`: each sleeps a placement-dependent time per
epoch and reports from a synthetic landscape, one GPU per trial). MLflow is a SQLite store, and/or
a real `mlflow server` (its own SQLite database, artifacts proxied) started for each run.

Measured per run (`measure`):
- ask: the sampler's seconds per proposal against the trials the study had been told had
  finished; and, after the search, `--extra-asks` proposals on a copy of the finished study;
- driver CPU seconds per trial, and its peak resident memory;
- the time a trial waits for the driver after it reports (Tune's function trainables block in
  `tune.report` until the driver has taken the result), as a share of trial time;
- MLflow write latency: per tracker hook and per client call (the driver makes them one at a
  time while trials report concurrently);
- Tune's experiment-state snapshots (count, seconds);
- wall time from the first proposal to the last trial's end against the ideal: the sum of the
  simulated trial time / the concurrency.
Invariants (`check_invariants`): every Tune trial has exactly one MLflow run, the study holds as
many trials as Tune ran, their outcomes agree, and nothing is left RUNNING.
Targets (issue 17): a proposal under 1 s at 1,000 finished trials; time lost to the driver under
2% of trial time at 64 concurrent trials; driver memory under 2 GB; wall within 10% of the ideal.
The machine is shared: the load average is recorded with every run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
# For every process of the loopback cluster and its drivers: no usage stats, no token auth (the
# cluster listens on loopback only; the tests run Ray the same way, tests/conftest.py).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
TARGETS = {"ask_s": 1.0, "wait_share": 0.02, "driver_rss_mb": 2048.0, "wall_over_ideal": 1.10}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop_group(proc: subprocess.Popen, pids: set[int], grace_s: float = 20.0) -> None:
    """SIGTERM to a process we started in its own session, then SIGKILL to it and to the
    processes it had started (recorded by id, never by name)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.time() + grace_s
    for pid in sorted(pids | {proc.pid}):
        while _alive(pid) and time.time() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if proc.poll() is None:
        proc.wait(timeout=10)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _descendants(pid: int) -> set[int]:
    import psutil

    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


class LoopbackCluster:
    """A Ray cluster on 127.0.0.1: a head that runs nothing (0 CPUs, 0 GPUs) and `nodes` nodes that
    declare `gpus_per_node` GPUs and as many CPUs each. Every node is a `ray start --block` in its own
    session with its own ports; the head's temp dir is ours (so `ray_current_cluster` is written
    there, not in /tmp/ray where another engineer's bare `ray.init()` would find it)."""

    def __init__(self, nodes: int, gpus_per_node: int, root: Path):
        self.nodes, self.gpus_per_node = nodes, gpus_per_node
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rscale-", dir="/tmp"))  # short: socket paths
        self.root = root
        self.procs: list[subprocess.Popen] = []
        self.address = ""

    def _start(self, args: list[str], log: str) -> None:
        env = {**os.environ, **RAY_ENV}
        with open(self.root / log, "w") as f:
            self.procs.append(subprocess.Popen(
                [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                 f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                 "--object-store-memory=100000000", *args],
                stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True))

    def start(self) -> str:
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self._start(["--head", f"--port={port}", "--num-cpus=0",
                     "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={self.temp_dir}"], "ray-head.log")
        self._wait(lambda r: r is not None, "head", probe_port=port)
        for i in range(self.nodes):  # one at a time: nodes started together time out on a loaded machine
            self._start([f"--address={self.address}", f"--num-cpus={self.gpus_per_node}",
                         f"--num-gpus={self.gpus_per_node}"], f"ray-node{i}.log")
            want = (i + 1) * self.gpus_per_node
            self._wait(lambda r: r is not None and r.get("GPU", 0) >= want, f"{want} GPUs")
        return self.address

    def _resources(self) -> dict | None:
        code = ("import json, ray\nray.init(address=%r, logging_level='ERROR', log_to_driver=False)\n"
                "print(json.dumps(ray.cluster_resources()))\nray.shutdown()\n" % self.address)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                              env={**os.environ, **RAY_ENV})
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            return None

    def _wait(self, ready, what: str, timeout_s: float = 240.0, probe_port: int | None = None) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.procs):
                raise RuntimeError(f"a ray node exited while waiting for {what}: see {self.root}/ray-*.log")
            if probe_port is not None and not _listening(probe_port):
                time.sleep(1)
                continue
            if ready(self._resources()):
                return
            time.sleep(2)
        raise RuntimeError(f"the loopback cluster did not reach {what} within {timeout_s:.0f}s")

    def stop(self) -> None:
        """Worker nodes first, then the head; every process each had started, by id."""
        for proc in reversed(self.procs):
            _stop_group(proc, _descendants(proc.pid))
        self.procs = []
        shutil.rmtree(self.temp_dir, ignore_errors=True)


class MlflowServer:
    """`mlflow server` on a free loopback port, its own SQLite store and proxied artifacts."""

    def __init__(self, root: Path):
        self.root, self.proc, self.url = root, None, ""

    def start(self, workers: int = 4) -> str:
        import urllib.request

        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with open(self.root / "mlflow-server.log", "w") as f:
            self.proc = subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                 "--artifacts-destination", str(self.root / "server-artifacts"), "--host", "127.0.0.1",
                 "--port", str(port), "--workers", str(workers)],
                stdout=f, stderr=subprocess.STDOUT, cwd=self.root, env=env, start_new_session=True)
        deadline = time.time() + 180
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: see {self.root / 'mlflow-server.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return self.url
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"mlflow server did not answer on {self.url}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop_group(self.proc, _descendants(self.proc.pid))
            self.proc = None


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _mem_available_gb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def run_driver(address: str, out: Path, trials: int, concurrent: int, epoch_s: float, tracking_uri: str,
               seed: int, min_free_gb: float) -> dict:
    """One search through the probed driver; returns the run's facts (paths, load, exit code)."""
    name = out.name
    args = ["--config", "simulated", "--address", address, "--trials", str(trials), "--gpus-per-trial", "1",
            "--cpus-per-trial", "1", "--output-dir", str(out), "--experiment", name, "--tracking-uri", tracking_uri,
            "--seed", str(seed), "--set", f"search.max_concurrent_trials={concurrent}",
            "--set", f"simulation.epoch_s={epoch_s}", "--set", f"simulation.trace_dir='{out / 'trace'}'"]
    probes = out / "probes.json"
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
           "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false", **RAY_ENV}
    loads, t0 = [os.getloadavg()[0]], time.time()
    with open(out / "driver.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.cluster_probes", str(probes), "--", *args],
                                stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True)
        low_memory = False
        while proc.poll() is None:
            time.sleep(2)
            loads.append(os.getloadavg()[0])
            if _mem_available_gb() < min_free_gb:
                low_memory = True
                _stop_group(proc, _descendants(proc.pid))
    if low_memory:
        raise RuntimeError(f"stopped the search: less than {min_free_gb} GB of memory left")
    if proc.returncode != 0:
        raise RuntimeError(f"the search failed (exit {proc.returncode}): see {out / 'driver.log'}")
    return {"name": name, "out": str(out), "tracking_uri": tracking_uri, "seconds": time.time() - t0,
            "load_avg_mean": statistics.fmean(loads), "load_avg_max": max(loads)}


def one_point(cluster: LoopbackCluster, work: Path, trials: int, backend: str, args) -> dict:
    """One search of `trials` trials with MLflow on `backend`: run, measure, check."""
    from benchmarks.cluster_measure import check_invariants, extra_asks, measure, summary

    out = work / f"scale-{trials}-{backend}"
    server = MlflowServer(work) if backend == "server" else None
    try:
        uri = server.start() if server else f"sqlite:///{out / 'mlflow.db'}"
        print(f"\n== {trials} trials, {args.concurrent} at once, MLflow {backend} ({uri}); load {os.getloadavg()[0]:.1f}, "
              f"{_mem_available_gb():.1f} GB free", flush=True)
        run = run_driver(cluster.address, out, trials, args.concurrent, args.epoch_s, uri, args.seed, args.min_free_gb)
        result = {"backend": backend, "epoch_s": args.epoch_s, "label": args.label, **measure(run, args.concurrent)}
        result["invariants"] = check_invariants(out, run["name"], uri)
    finally:
        if server:
            server.stop()
    asks = extra_asks(out, run["name"], args.extra_asks) if args.extra_asks else []
    result["ask_s_after"] = {"finished": result["invariants"]["study_trials"], **summary(asks)}
    print_point(result)
    return result


def _f(x, fmt=".3f") -> str:
    return "-" if x is None else format(x, fmt)


def print_point(r: dict) -> None:
    bins = "  ".join(f"[{k}] {_f(v['p50'])}/{_f(v['max'])}" for k, v in r["ask_s"].items() if v["n"])
    hooks = "  ".join(f"{k.replace('on_trial_', '')} {_f(v['p50'], '.1f')}/{_f(v['p95'], '.1f')}/{_f(v['max'], '.0f')}"
                      for k, v in r["hook_ms"].items())
    inv = r["invariants"]
    print(f"ask s (p50/max) by finished trials: {bins}; after the search, at {r['ask_s_after']['finished']} "
          f"finished: {_f(r['ask_s_after']['p50'])}/{_f(r['ask_s_after']['max'])}")
    print(f"tell s p50/max {_f(r['tell_s']['p50'])}/{_f(r['tell_s']['max'])}; MLflow hook ms p50/p95/max: {hooks}")
    print(f"driver: CPU {_f(r['driver_cpu_s']['per_trial'])} s/trial ({_f(r['driver_cpu_s']['share_of_one_core'], '.0%')} "
          f"of a core), peak RSS {_f(r['driver_rss_mb']['peak'], '.0f')} MB; snapshots {r['snapshots']['count']} x "
          f"{_f(r['snapshots']['p50'])} s (max {_f(r['snapshots']['max'])}, {_f(r['snapshots']['share_of_wall'], '.1%')} of wall)")
    w = r["report_wait_s"]
    print(f"trials: wait after a report p50/p95/max {_f(w['p50'])}/{_f(w['p95'])}/{_f(w['max'])} s, "
          f"{_f(r['wait_share'], '.2%')} of trial time; gap between trials on a worker p50 "
          f"{_f(r['gap_between_trials_s']['p50'])} s; {r['workers']} workers")
    if "steady_wait_share" in r:  # runs recorded before these two measures lack them
        sw = r["steady_report_wait_s"]
        print(f"after the warm-up ({r['warm_up_s']:.0f} s: the first {r['concurrent']} trials' cold workers have all "
              f"reported once): wait p50/p95/max {_f(sw['p50'])}/{_f(sw['p95'])}/{_f(sw['max'])} s, "
              f"{_f(r['steady_wait_share'], '.2%')} of trial time")
    print(f"wall {r['wall_s']:.0f} s vs ideal {r['ideal_s']:.0f} s (simulated {r['simulated_s']:.0f} s / {r['concurrent']}) "
          f"-> x{r['wall_over_ideal']:.3f}; load avg mean {r['load_avg_mean']:.1f} (max {r['load_avg_max']:.1f})")
    if "schedule_s" in r:
        print(f"wall vs the same trials on {r['concurrent']} slots with no overhead (tail included): "
              f"{r['schedule_s']:.0f} s -> x{r['wall_over_schedule']:.3f}")
    print(f"invariants: {inv['tune_trials']} Tune trials, {inv['mlflow_trial_runs']} MLflow trial runs, "
          f"{inv['study_trials']} study trials {inv['study_states']}: " + ("hold" if not inv["problems"] else
                                                                              "FAIL: " + "; ".join(inv["problems"])))


def verdicts(results: list[dict]) -> list[str]:
    """The issue's targets against the largest run of each backend."""
    lines = []
    for backend in sorted({r["backend"] for r in results}):
        r = max((x for x in results if x["backend"] == backend), key=lambda x: x["trials"])
        during = [v["max"] for v in r["ask_s"].values() if v["n"]][-1]  # the most finished trials seen
        ask = max(during, r["ask_s_after"]["max"] or 0.0)
        checks = [(f"proposal < 1 s at up to {r['ask_s_after']['finished']} finished trials", ask, TARGETS["ask_s"], ".3f", "s"),
                  ("time lost to the driver < 2% of trial time", r["wait_share"], TARGETS["wait_share"], ".2%", ""),
                  ("driver memory < 2 GB", r["driver_rss_mb"]["peak"], TARGETS["driver_rss_mb"], ".0f", " MB"),
                  ("wall within 10% of the ideal", r["wall_over_ideal"], TARGETS["wall_over_ideal"], ".3f", "x")]
        if "steady_wait_share" in r:  # the same two targets, read after the warm-up / against the tail-aware ideal
            checks[2:2] = [("  the same after the warm-up", r["steady_wait_share"], TARGETS["wait_share"], ".2%", "")]
            checks.append(("  the same against the no-overhead schedule", r["wall_over_schedule"], TARGETS["wall_over_ideal"],
                           ".3f", "x"))
        for what, value, limit, fmt, unit in checks:
            lines.append(f"{backend} {r['trials']} trials: {what}: {format(value, fmt)}{unit} -> "
                         f"{'met' if value < limit else 'NOT met'}")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, nargs="+", default=[100, 300, 1000], help="one search per count")
    p.add_argument("--concurrent", type=int, default=64, help="trials running at once (one GPU each)")
    p.add_argument("--gpus-per-node", type=int, default=32)
    p.add_argument("--epoch-s", type=float, default=20.0, help="simulated seconds per epoch of the full placement")
    p.add_argument("--backends", nargs="+", choices=["sqlite", "server"], default=["sqlite", "server"])
    p.add_argument("--extra-asks", type=int, default=5, help="proposals timed on the finished study")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--label", default="", help="a name for these runs in the results (e.g. before, after)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--keep", type=Path, default=None, help="keep every run's folder here (default: removed)")
    p.add_argument("--min-free-gb", type=float, default=2.0, help="stop a search when less memory is left")
    p.add_argument("--plot", type=Path, nargs="+", default=None, help="plot these results files and exit")
    p.add_argument("--img", type=Path, default=ROOT / "docs" / "img" / "cluster-scale.png")
    args = p.parse_args()
    if args.plot:
        from benchmarks.cluster_plot import plot

        print(plot([json.loads(f.read_text()) for f in args.plot], args.img))
        return 0
    work = args.keep or Path(tempfile.mkdtemp(prefix="cluster-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    nodes = -(-args.concurrent // args.gpus_per_node)
    cluster = LoopbackCluster(nodes, args.gpus_per_node, work)
    results: list[dict] = []
    t0 = time.time()
    try:
        print(f"loopback cluster: a head and {nodes} nodes x {args.gpus_per_node} GPUs ...", flush=True)
        cluster.start()
        print(f"cluster up at {cluster.address} in {time.time() - t0:.0f}s", flush=True)
        for trials in args.trials:
            for backend in args.backends:
                results.append(one_point(cluster, work, trials, backend, args))
                if args.out:
                    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=1))
    finally:
        cluster.stop()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    for line in verdicts(results):
        print(line)
    print(f"\n{time.time() - t0:.0f}s")
    return 1 if any(r["invariants"]["problems"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
