"""The throughput and latency bench: the floor (a Python caller workflow calling a no-op Python
activity that signals it back) and ours (the same caller calling ProvisionTenantCompute on
compute-worker with the simulated provider and waiting for its compute-provisioned signal),
side by side in one run, level by level. Prints a markdown table. Started by scripts/bench.sh,
which builds the worker and starts the dev server.

Benchmarks print figures; they assert nothing but that every operation completed.
"""

import argparse
import asyncio
import datetime
import os
import platform
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

FLOOR_QUEUE = "bench-floor"
CALLER_QUEUE = "bench-caller"
OURS_QUEUE = "bench-ours"


@workflow.defn(name="BenchCaller")
class BenchCaller:
    def __init__(self) -> None:
        self.callback = None
        self.signal_name = None

    @workflow.signal(name="compute-provisioned")
    def provisioned(self, callback: dict) -> None:
        self.signal_name, self.callback = "compute-provisioned", callback

    @workflow.signal(name="compute-failed")
    def failed(self, callback: dict) -> None:
        self.signal_name, self.callback = "compute-failed", callback

    @workflow.run
    async def run(self, args: dict) -> dict:
        handle = await workflow.execute_activity(
            args["activity"],
            args["input"],
            task_queue=args["taskQueue"],
            start_to_close_timeout=timedelta(seconds=60),
        )
        await workflow.wait_condition(lambda: self.callback is not None)
        return {"signal": self.signal_name, "callback": self.callback, "handle": handle}


@activity.defn(name="BenchFloorNoop")
async def floor_noop(request: dict) -> dict:
    # The least a call-and-signal does: answer, and signal the caller.
    info = activity.info()
    client = activity.client()
    await client.get_workflow_handle(info.workflow_id).signal(
        "compute-provisioned", {"executionId": info.activity_id, "state": "succeeded"}
    )
    return {"executionId": info.activity_id, "state": "running"}


def proc_stats(pid: int) -> dict:
    """RSS now and at peak (MiB), CPU seconds so far."""
    out = {"rss": 0.0, "hwm": 0.0, "cpu": 0.0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss"] = int(line.split()[1]) / 1024
                elif line.startswith("VmHWM:"):
                    out["hwm"] = int(line.split()[1]) / 1024
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        out["cpu"] = (int(fields[11]) + int(fields[12])) / tick
    except FileNotFoundError:
        pass
    return out


class OurWorker:
    """The compute-worker process, with its log in the bench's directory."""

    def __init__(self, binary: str, workdir: str, delay: str) -> None:
        self.log_path = os.path.join(workdir, f"worker-{delay}.log")
        self.db_path = os.path.join(workdir, "bench.db")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [binary, "run", "--task-queue", OURS_QUEUE,
             "--database", f"sqlite://{self.db_path}",
             "--provider", "simulated", "--simulated-delay", delay,
             # Past the longest delay: a timed-out operation tells its caller TIMEOUT first.
             "--default-timeout", "2h",
             "--max-concurrent-activities", os.environ.get("BENCH_MAX_ACTIVITIES", "1000")]
            # More flags of the worker's own, such as `--metrics-address 127.0.0.1:9464`.
            + shlex.split(os.environ.get("BENCH_WORKER_ARGS", "")),
            stdout=log, stderr=log, env={**os.environ, "RUST_LOG": "warn,compute_worker=info"},
        )
        deadline = time.time() + 60
        while True:
            if self.proc.poll() is not None:
                sys.exit(f"compute-worker exited at start; see {self.log_path}")
            with open(self.log_path, "rb") as f:
                if b"Worker started" in f.read():
                    break
            if time.time() > deadline:
                sys.exit(f"compute-worker did not start within 60 s; see {self.log_path}")
            time.sleep(0.1)

    def stats(self) -> dict:
        return proc_stats(self.proc.pid)

    def in_flight(self) -> int:
        """Executions the store holds as not final (what the observer watches)."""
        try:
            db = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
            try:
                return db.execute("SELECT count(*) FROM executions WHERE state IN "
                                  "('pending', 'running', 'timed_out')").fetchone()[0]
            finally:
                db.close()
        except sqlite3.Error:
            return 0

    def stop(self, kill: bool = False) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def caller_args(flow: str, run: str, i: int) -> dict:
    if flow == "floor":
        return {"activity": "BenchFloorNoop", "taskQueue": FLOOR_QUEUE, "input": {}}
    return {"activity": "ProvisionTenantCompute", "taskQueue": OURS_QUEUE,
            "input": {"tenantId": f"b{run}-{i}", "spec": {"image": "bench/app:1"}}}


async def one(client: Client, flow: str, run: str, i: int) -> tuple:
    started = time.perf_counter()
    wf_id = f"bench-{flow}-{run}-{i}"
    result = await client.execute_workflow(
        "BenchCaller", caller_args(flow, run, i), id=wf_id, task_queue=CALLER_QUEUE,
        execution_timeout=timedelta(hours=2),
    )
    return time.perf_counter() - started, wf_id, result


async def level(client: Client, flow: str, in_flight: int, ops: int) -> dict:
    """`ops` operations, exactly `in_flight` at a time."""
    run = uuid.uuid4().hex[:8]
    latencies, failures, sample = [], 0, None
    queue = list(range(ops))

    async def lane() -> None:
        nonlocal failures, sample
        while queue:
            i = queue.pop()
            latency, wf_id, result = await one(client, flow, run, i)
            latencies.append(latency)
            if result["signal"] != "compute-provisioned":
                failures += 1
            sample = sample or (wf_id, result)

    started = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(in_flight)))
    wall = time.perf_counter() - started
    latencies.sort()
    return {"ops": ops, "wall": wall, "ops_s": ops / wall, "failures": failures,
            "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
            "sample": sample}


async def history_events(client: Client, workflow_id: str) -> int:
    try:
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        return len(history.events)
    except Exception:
        return 0


async def events_per_op(client: Client, sample) -> str:
    wf_id, result = sample
    caller = await history_events(client, wf_id)
    execution = (result.get("callback") or {}).get("executionId")
    tracker = 0
    if execution and result["handle"].get("trackerWorkflowId"):
        tracker = await history_events(client, f"compute-execution-{execution}")
    return f"{caller}+{tracker}"


async def scale(client: Client, worker: OurWorker, count: int, delay_s: float, kill: bool,
                restart) -> dict:
    """`count` operations in flight at once on a provider that takes `delay_s`."""
    run = uuid.uuid4().hex[:8]
    t0 = time.perf_counter()
    handles = []
    for chunk in range(0, count, 200):
        handles += await asyncio.gather(*(
            client.start_workflow("BenchCaller", caller_args("ours", run, i),
                                  id=f"bench-scale-{run}-{i}", task_queue=CALLER_QUEUE,
                                  execution_timeout=timedelta(hours=2))
            for i in range(chunk, min(count, chunk + 200))))
    started_s = time.perf_counter() - t0
    peak = worker.stats()["hwm"]
    # Sampled every 2 s: the most operations the store held in flight at once, and the
    # worker's peak RSS (a killed worker's included).
    sampled = {"in_flight": 0, "rss": 0.0}
    current = [worker]

    async def sample() -> None:
        while True:
            sampled["in_flight"] = max(sampled["in_flight"], current[0].in_flight())
            sampled["rss"] = max(sampled["rss"], current[0].stats()["hwm"])
            await asyncio.sleep(2)

    sampler = asyncio.create_task(sample())
    killed = False
    if kill:
        await asyncio.sleep(max(1.0, delay_s / 2 - started_s))
        peak = max(peak, worker.stats()["hwm"])
        worker.stop(kill=True)
        killed = True
        worker = restart()
        current[0] = worker
    # Every result is a long poll: thousands at once pass the server's per-namespace poller
    # limit (ResourceExhausted), so a bounded number wait at a time, each retried.
    polls = asyncio.Semaphore(100)

    async def outcome(handle):
        error = None
        for _ in range(30):
            try:
                async with polls:
                    return await handle.result()
            except Exception as e:  # counted as missing if it never succeeds
                error = e
                await asyncio.sleep(2)
        return error

    results = await asyncio.gather(*(outcome(h) for h in handles))
    done = time.perf_counter() - t0
    sampler.cancel()
    peak = max(peak, sampled["rss"])
    ok = sum(1 for r in results if isinstance(r, dict) and r["signal"] == "compute-provisioned")
    return {"count": count, "started_s": started_s, "done_s": done, "delivered": ok,
            "peak_in_flight": sampled["in_flight"],
            "missing": count - ok, "peak_rss": max(peak, worker.stats()["hwm"]),
            "killed": killed, "worker": worker}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--levels", default="1,20,200,1000")
    p.add_argument("--ops", type=int, default=0,
                   help="operations per level (default: max(50, 3 x in flight), at most 3000)")
    p.add_argument("--scale", type=int, default=10000, help="operations started at once (0: skip)")
    p.add_argument("--scale-delay", default="5m")
    p.add_argument("--scale-kill", action="store_true",
                   help="kill -9 the worker halfway through the delay, and restart it")
    p.add_argument("--worker", required=True)
    a = p.parse_args()

    client = await Client.connect(os.environ["TEMPORAL_ADDRESS"])
    workdir = tempfile.mkdtemp(prefix="compute-bench-")
    rows = []
    async with Worker(client, task_queue=CALLER_QUEUE, workflows=[BenchCaller],
                      max_concurrent_workflow_tasks=200), \
            Worker(client, task_queue=FLOOR_QUEUE, activities=[floor_noop],
                   max_concurrent_activities=1000):
        ours = OurWorker(a.worker, workdir, "0s")
        try:
            for flow in ("floor", "ours"):
                await level(client, flow, 5, 20)  # warm-up
            for in_flight in [int(x) for x in a.levels.split(",") if x]:
                ops = a.ops or min(3000, max(50, 3 * in_flight))
                figures = {}
                for flow in ("floor", "ours"):
                    before = ours.stats()
                    r = await level(client, flow, in_flight, ops)
                    after = ours.stats()
                    r["cpu_ms"] = (after["cpu"] - before["cpu"]) * 1000 / ops if flow == "ours" else None
                    r["rss"] = after["hwm"] if flow == "ours" else None
                    r["events"] = await events_per_op(client, r["sample"])
                    figures[flow] = r
                    print(f"# {flow} at {in_flight}: {r['ops_s']:.1f} ops/s, p50 {r['p50']:.0f} ms",
                          file=sys.stderr, flush=True)
                rows.append((in_flight, figures))
            scaled = None
            if a.scale:
                ours.stop()
                delay = a.scale_delay
                ours = OurWorker(a.worker, workdir, delay)
                m = re.fullmatch(r"(\d+)(ms|s|m)", delay)
                if not m:
                    sys.exit(f"--scale-delay: {delay!r} is not like 500ms, 30s or 5m")
                delay_s = int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]

                def restart():
                    return OurWorker(a.worker, workdir, delay)

                scaled = await scale(client, ours, a.scale, delay_s, a.scale_kill, restart)
                ours = scaled.pop("worker")
        finally:
            ours.stop()

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"Measured {datetime.date.today()} on {os.cpu_count()} cores ({cpu_model()}), "
          f"commit {commit}, release build, one Temporal dev server, SQLite, "
          f"simulated provider at 0 s.\n")
    print("| in flight | flow | ops | ops/s | p50 ms | p99 ms | ops/s vs floor | p50 vs floor "
          "| history events/op (caller+tracker) | worker CPU ms/op | worker peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for in_flight, f in rows:
        fl, ou = f["floor"], f["ours"]
        print(f"| {in_flight} | floor | {fl['ops']} | {fl['ops_s']:.1f} | {fl['p50']:.0f} | "
              f"{fl['p99']:.0f} | 1 | 1 | {fl['events']} | | |")
        print(f"| {in_flight} | compute-worker | {ou['ops']} | {ou['ops_s']:.1f} | {ou['p50']:.0f} | "
              f"{ou['p99']:.0f} | {ou['ops_s'] / fl['ops_s']:.2f} | {ou['p50'] / fl['p50']:.2f} | "
              f"{ou['events']} | {ou['cpu_ms']:.1f} | {ou['rss']:.0f} |")
    failures = sum(f[x]["failures"] for _, f in rows for x in f)
    if scaled:
        print(f"\nScale: {scaled['count']} operations started at once, simulated delay "
              f"{a.scale_delay}{', worker killed -9 halfway and restarted' if scaled['killed'] else ''}: "
              f"started in {scaled['started_s']:.1f} s, all done {scaled['done_s']:.1f} s after the "
              f"first start, {scaled['delivered']} callbacks delivered, {scaled['missing']} missing, "
              f"at most {scaled['peak_in_flight']} in flight in the store at once, "
              f"worker peak RSS {scaled['peak_rss']:.0f} MiB.")
        failures += scaled["missing"]
    if failures:
        sys.exit(f"{failures} operations did not complete with compute-provisioned; the "
                 f"worker's logs and store are in {workdir}")
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
