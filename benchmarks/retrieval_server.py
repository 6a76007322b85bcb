"""The retrieval server against in-process BM25, in one process tree, with a compiled load tool.

    python benchmarks/retrieval_server.py                      # server core 0, wrk on core 1
    python benchmarks/retrieval_server.py --rounds 5 --seconds 10 --workers 1,2
    python benchmarks/retrieval_server.py --server-cpus 0-1 --client-cpus 0-1   # no pinning

What it measures (mini index, mini_eval questions, Search-R1 ``/retrieve`` with topk 3):

1. In-process ``BM25Index.search`` on batches of 32 questions, pinned to the server's core(s):
   the baseline, queries/s.
2. ``ssrl-trl serve-retriever`` on those cores under ``wrk`` (a compiled HTTP load tool, Debian
   package ``wrk``) pinned to the client core(s), 32 connections each sending one single-query
   request after another: requests/s, latency percentiles, failed valid requests (a Lua check of
   every answer: HTTP 200 and a ``result`` list), the CPU share of the client and of the server.
   Rounds alternate 1 and 2 so a load that changes under the run hits both alike; the ratio is
   the median of the rounds' server/in-process ratios.
3. The same server with 32 queries per request (the batched path a GRPO step uses).
4. 1 vs N server processes (``--workers``), with each process's RSS and PSS (the index is
   memory-mapped, so the workers share its pages). N processes need N cores: these runs give
   server and client ``--workers-cpus`` (both cores by default), so they compare with each other,
   not with step 2.
5. Two replicas (two servers on two ports) behind one multi-URL ``HTTPRetriever``, driven by
   Python threads; one replica is killed (SIGKILL) halfway: lost valid queries must be 0.

Exit status 1 when a valid request failed or a query was lost. Goals (issue 16): server/in-process
>= 0.5, p99 < 50 ms at 32 clients, 0 failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from ssrl_trl.retrieval.bm25 import BM25Index
from ssrl_trl.retrieval.client import HTTPRetriever
from ssrl_trl.retrieval.corpus import INDEX_META, iter_corpus

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
TOPK = 3

# wrk's Lua: rotate over prepared bodies, check every answer, print one parseable summary
LUA = r"""
local bodies = {%(bodies)s}
local i = 0
local threads = {}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
function setup(thread) table.insert(threads, thread) end
function init(args) failed = 0; checked = 0 end
function request()
  i = i %% #bodies + 1
  return wrk.format(nil, "/retrieve", nil, bodies[i])
end
function response(status, headers, body)
  checked = checked + 1
  if status ~= 200 or string.sub(body, 1, 11) ~= '{"result":[' then failed = failed + 1 end
end
function done(summary, latency, requests)
  local f, c = 0, 0
  for _, t in ipairs(threads) do f = f + t:get("failed"); c = c + t:get("checked") end
  local e = summary.errors
  io.write(string.format("SSRL requests=%%d duration_us=%%d checked=%%d failed=%%d connect=%%d read=%%d write=%%d timeout=%%d status=%%d p50_us=%%d p90_us=%%d p99_us=%%d max_us=%%d\n",
    summary.requests, summary.duration, c, f, e.connect, e.read, e.write, e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def _lua(bodies: list[bytes]) -> str:
    quoted = ",".join(f"[==[{b.decode()}]==]" for b in bodies)
    return LUA % {"bodies": quoted}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpus(spec: str) -> set[int]:
    out: set[int] = set()
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its reaped children so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (uvicorn's worker processes)."""
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def _tree_cpu_s(pid: int) -> float:
    total = 0.0
    for p in _tree(pid):
        with contextlib.suppress(OSError):  # a process that just ended
            total += _proc_cpu_s(p)
    return total


def _memory(pid: int, index: Path) -> list[dict[str, Any]]:
    """RSS and PSS (MiB) of each process of the server, and whether it maps the index files."""
    rows = []
    for p in _tree(pid):
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text()
            maps = Path(f"/proc/{p}/maps").read_text()
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "resource_tracker" in cmd:
            continue
        kb = {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+):\s+(\d+) kB", rollup, re.M)}
        rows.append(
            {
                "pid": p,
                "role": "parent" if p == pid else "worker",
                "rss_mib": kb.get("Rss", 0) / 1024,
                "pss_mib": kb.get("Pss", 0) / 1024,
                "maps_index": sum(str(index.resolve()) in line for line in maps.splitlines()),
            }
        )
    return rows


class Server:
    """``ssrl-trl serve-retriever`` as a child pinned to ``cpus``; stopped on exit."""

    def __init__(self, index: Path, cpus: str, workers: int = 1) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "ssrl_trl.cli", "serve-retriever", "--index", str(index)]
        cmd += ["--port", str(self.port), "--workers", str(workers), "--log-level", "warning"]
        self.proc = subprocess.Popen(["taskset", "-c", cpus, *cmd], cwd=REPO)
        deadline, pids = time.monotonic() + 120, set()
        while len(pids) < workers:  # every worker up, not only the first (/health names its pid)
            try:  # a fresh connection each time, so the kernel may hand it to any worker
                resp = httpx.get(self.url + "/health", timeout=2)
                if resp.status_code == 200:
                    pids.add(resp.json()["pid"])
                    continue
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"retrieval server (workers={workers}) did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_wrk(server: Server, lua: Path, connections: int, seconds: float, cpus: str) -> dict[str, Any]:
    """One wrk run: its figures, its own CPU share and the server's (cores used / wall time)."""
    cmd = ["taskset", "-c", cpus, "wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(lua)]
    server_cpu0, wall0 = _tree_cpu_s(server.proc.pid), time.monotonic()
    proc = subprocess.Popen([*cmd, server.url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - wall0
    out = proc.stdout.read() if proc.stdout else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    line = next((ln for ln in out.splitlines() if ln.startswith("SSRL ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}):\n{out}")
    r = {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}
    errors = r["connect"] + r["read"] + r["write"] + r["timeout"]
    return {
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "requests": r["requests"],
        "failed": r["failed"] + errors,
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "client_cpu": (usage.ru_utime + usage.ru_stime) / wall,
        "server_cpu": (_tree_cpu_s(server.proc.pid) - server_cpu0) / wall,
    }


def in_process_qps(
    retriever: BM25Index, questions: list[str], batch: int, seconds: float, cpus: str
) -> float:
    """Queries/s of ``retriever.search`` in batches of ``batch``, this process pinned to ``cpus``."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, _cpus(cpus))
    try:
        batches = [questions[i : i + batch] for i in range(0, len(questions) - batch + 1, batch)]
        retriever.search(batches[0], TOPK)
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            for b in batches:
                retriever.search(b, TOPK)
                n += len(b)
        return n / (time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, before)


def kill_a_replica(
    index: Path, questions: list[str], expected: dict[str, list[str]], args: argparse.Namespace
) -> dict[str, Any]:
    """Two replicas behind one multi-URL client; SIGKILL one halfway. Lost valid queries must be 0."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, _cpus(args.client_cpus))
    try:
        with Server(index, args.server_cpus) as a, Server(index, args.server_cpus) as b:
            client = HTTPRetriever(urls=[a.url, b.url], timeout=5, retries=2, backoff=0.05, cooloff=2)
            sent, lost, wrong = [0], [0], [0]
            lock, stop = threading.Lock(), threading.Event()

            def caller(seed: int) -> None:
                i = seed
                while not stop.is_set():
                    qs = [questions[(i + j) % len(questions)] for j in range(4)]
                    i += 7
                    try:
                        res = client.search(qs, TOPK)
                        bad = sum(
                            [d.id for d in docs] != expected[q] for q, docs in zip(qs, res, strict=True)
                        )
                        failed = 0
                    except Exception:  # any error loses the request's queries
                        bad, failed = 0, len(qs)
                    with lock:
                        sent[0] += len(qs)
                        wrong[0] += bad
                        lost[0] += failed

            threads = [threading.Thread(target=caller, args=(s,)) for s in range(args.replica_threads)]
            start = time.monotonic()
            for t in threads:
                t.start()
            time.sleep(args.seconds / 2)
            sent_at_kill = sent[0]
            os.kill(b.proc.pid, signal.SIGKILL)
            time.sleep(args.seconds / 2)
            stop.set()
            for t in threads:
                t.join()
            wall = time.monotonic() - start
            stats = client.replica_stats()
    finally:
        os.sched_setaffinity(0, before)
    return {
        "queries": sent[0],
        "queries_at_kill": sent_at_kill,
        "lost": lost[0],
        "wrong": wrong[0],
        "qps": sent[0] / wall,
        "replicas": stats,
    }


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--index", type=Path, default=REPO / "indexes" / "mini_wiki_bm25")
    p.add_argument("--corpus", type=Path, default=DATA / "corpus" / "mini_wiki.jsonl")
    p.add_argument("--eval", type=Path, default=DATA / "qa" / "mini_eval.jsonl")
    p.add_argument("--rounds", type=int, default=3, help="in-process / server rounds, alternated")
    p.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    p.add_argument("--connections", type=int, default=32, help="concurrent single-query clients")
    p.add_argument("--batch", type=int, default=32, help="in-process batch (and queries per batched request)")
    p.add_argument("--workers", default="1,2", help="server process counts to compare")
    p.add_argument("--server-cpus", default="0", help="taskset list for the server and the baseline")
    p.add_argument("--client-cpus", default="1", help="taskset list for the load generator")
    p.add_argument(
        "--workers-cpus",
        default="0-1",
        help="taskset list for server and client in the 1-vs-N workers runs (N workers need N cores)",
    )
    p.add_argument("--replica-threads", type=int, default=8, help="client threads in the kill-a-replica run")
    p.add_argument("--skip-replica-kill", action="store_true")
    p.add_argument("--json", type=Path, help="also write every figure here")
    args = p.parse_args(argv)

    if shutil.which("wrk") is None:
        print("wrk not found: install it (Debian: apt-get install -y wrk)", file=sys.stderr)
        return 2
    if not (args.index / INDEX_META).exists():
        BM25Index.build(iter_corpus(args.corpus), args.index, show_progress=False)
    lines = args.eval.read_text(encoding="utf-8").splitlines()
    questions = [json.loads(line)["question"] for line in lines if line.strip()]
    retriever = BM25Index.load(args.index)
    expected = {
        q: [d.id for d in docs] for q, docs in zip(questions, retriever.search(questions, TOPK), strict=True)
    }

    tmp = Path(tempfile.mkdtemp(prefix="ssrl_bench_"))
    single = tmp / "single.lua"
    single.write_text(
        _lua([json.dumps({"queries": [q], "topk": TOPK, "return_scores": True}).encode() for q in questions])
    )
    batched = tmp / "batched.lua"
    chunks = [questions[i : i + args.batch] for i in range(0, len(questions) - args.batch + 1, args.batch)]
    batched.write_text(
        _lua([json.dumps({"queries": c, "topk": TOPK, "return_scores": True}).encode() for c in chunks])
    )
    load = os.getloadavg()
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; server cpus {args.server_cpus}, "
        f"client cpus {args.client_cpus}; {len(questions)} mini_eval questions, topk {TOPK}"
    )
    report: dict[str, Any] = {"load_before": load, "args": {k: str(v) for k, v in vars(args).items()}}
    failed = 0

    # 1-2: alternate rounds of the in-process baseline and the server under 32 single-query clients
    rounds = []
    with Server(args.index, args.server_cpus) as server:
        run_wrk(server, single, args.connections, 2, args.client_cpus)  # warm-up
        for i in range(args.rounds):
            base = in_process_qps(retriever, questions, args.batch, args.seconds / 2, args.server_cpus)
            w = run_wrk(server, single, args.connections, args.seconds, args.client_cpus)
            rounds.append({**w, "in_process_qps": base, "ratio": w["rps"] / base})
            print(
                f"round {i + 1}: in-process {base:,.0f} q/s (batch {args.batch}) | server {w['rps']:,.0f} q/s "
                f"({args.connections} clients x 1 query) = {w['rps'] / base:.2f}x | p50 {w['p50_ms']:.1f} "
                f"p99 {w['p99_ms']:.1f} max {w['max_ms']:.0f} ms | failed {w['failed']}/{w['requests']} | "
                f"cpu: client {w['client_cpu']:.0%}, server {w['server_cpu']:.0%}"
            )
            failed += w["failed"]
        # 3: 32 queries per request
        wb = run_wrk(server, batched, 4, args.seconds, args.client_cpus)
        failed += wb["failed"]
        base = in_process_qps(retriever, questions, args.batch, args.seconds / 2, args.server_cpus)
        qps_b = wb["rps"] * args.batch
        print(
            f"batched requests ({args.batch} queries, 4 connections): {qps_b:,.0f} q/s = {qps_b / base:.2f}x "
            f"in-process ({base:,.0f}) | p99 {wb['p99_ms']:.1f} ms | failed {wb['failed']}/{wb['requests']} | "
            f"cpu: client {wb['client_cpu']:.0%}, server {wb['server_cpu']:.0%}"
        )
    report["rounds"] = rounds
    report["batched"] = {**wb, "qps": qps_b, "in_process_qps": base}
    summary = {
        "ratio": _median(rounds, "ratio"),
        "server_qps": _median(rounds, "rps"),
        "in_process_qps": _median(rounds, "in_process_qps"),
        "p99_ms": _median(rounds, "p99_ms"),
        "worst_p99_ms": max(r["p99_ms"] for r in rounds),
        "failed": sum(r["failed"] for r in rounds),
        "requests": sum(r["requests"] for r in rounds),
        "client_cpu": _median(rounds, "client_cpu"),
        "server_cpu": _median(rounds, "server_cpu"),
    }
    report["summary"] = summary
    print(
        f"SUMMARY (median of {args.rounds} rounds): server/in-process {summary['ratio']:.2f}x "
        f"({summary['server_qps']:,.0f} vs {summary['in_process_qps']:,.0f} q/s; goal >= 0.5) | "
        f"p99 {summary['p99_ms']:.1f} ms (worst round {summary['worst_p99_ms']:.1f}; goal < 50) | "
        f"failed valid requests {summary['failed']} of {summary['requests']} | client CPU "
        f"{summary['client_cpu']:.0%} of a core, server {summary['server_cpu']:.0%}"
    )

    # 4: 1 vs N server processes
    report["workers"] = []
    for n in (int(x) for x in args.workers.split(",")):
        with Server(args.index, args.workers_cpus, workers=n) as server:
            run_wrk(server, single, args.connections, 2, args.workers_cpus)
            w = run_wrk(server, single, args.connections, args.seconds, args.workers_cpus)
            mem = _memory(server.proc.pid, args.index)
        failed += w["failed"]
        report["workers"].append({"workers": n, **w, "memory": mem})
        procs = ", ".join(
            f"{m['role']} RSS {m['rss_mib']:.0f} PSS {m['pss_mib']:.0f} MiB"
            + (f" ({m['maps_index']} index maps)" if m["role"] == "worker" or n == 1 else "")
            for m in mem
        )
        print(
            f"workers={n}: {w['rps']:,.0f} q/s | p99 {w['p99_ms']:.1f} ms | failed {w['failed']} | "
            f"cpu: client {w['client_cpu']:.0%}, server {w['server_cpu']:.0%} | {procs}"
        )

    # 5: kill a replica mid-run
    if not args.skip_replica_kill:
        k = kill_a_replica(args.index, questions, expected, args)
        report["replica_kill"] = k
        per = "; ".join(
            f"{s['endpoint']}: {s['requests']} requests, {s['errors']} errors {s['errors_by_kind']}, {s['state']}"
            for s in k["replicas"]
        )
        print(
            f"kill a replica: {k['queries']} queries ({k['queries_at_kill']} before the SIGKILL) through 2 "
            f"replicas at {k['qps']:,.0f} q/s; lost {k['lost']}, wrong {k['wrong']} | {per}"
        )
        failed += k["lost"] + k["wrong"]
    load = os.getloadavg()
    report["load_after"] = load
    print(f"load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
