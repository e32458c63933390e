"""Kontrol's HTTP endpoints under ``wrk``: one process, ``--workers N`` and (``--baseline``) an
older commit, side by side.

``make bench-kontrol``'s clients are Python processes; on a 2-core machine they, etcd and
Kontrol share the cores, so the clients' own CPU caps what Kontrol can show, and a second
Kontrol worker has little left to run on. Here the load comes from ``wrk`` (Debian's ``wrk``,
C: ~15-40 µs of CPU per request here) with a Lua script, so that what is measured is Kontrol and
its storage:

1. **register**: ``POST /register`` of new kites (unique ids per wrk thread and request,
   alice's kite key, 100 kites per name) for ``--seconds``;
2. **heartbeat**: ``GET /heartbeat?id=`` cycling over the kites phase 1 registered;
3. **reregister**: ``POST /register`` of those same kites again, as after a Kontrol restart (the
   storage already has every one of them: the update path, not the insert).

Each wrk thread has one keep-alive connection (``--threads`` defaults to ``--connections``) and
heartbeats the kites it registered, as a real kite registers and heartbeats over one connection
of its own: with workers one worker serves all of a kite's requests (once per kite, a heartbeat
reaching the other worker after the reconnect between the phases adopts it from the storage).
Each run gets a fresh Kontrol (``kontrol_scale.py --serve``; today's code is the working tree
copied, the baseline a worktree), a fresh etcd (an earlier run's leases expiring would cost etcd
CPU for minutes) or a fresh PostgreSQL database; versions alternate over ``--rounds``; nothing
is pinned. A response counts only if it is 200 and says what it should (``heartbeatInterval`` /
``pong``). Per run: calls/s, wrk's latency p50/p99, the CPU % of Kontrol (all its processes),
etcd or PostgreSQL (with its backends) and wrk, and calls per Kontrol CPU-second (the same for
one process and N workers when Kontrol itself scales); then the medians and ratios (median of
the per-round ratios).

    python bench/kontrol_wrk.py --storage etcd,etcd2,postgres --baseline 8e8e5a0 --rounds 3
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import common  # noqa: E402
from kontrol_scale import ENVIRONMENT, REGION, USER, VERSION, KontrolProcess, Plan, profiled  # noqa: E402
from kontrol_setup import Sites, baseline_tree, current_tree, install_cleanup, scratch_dir  # noqa: E402

SHARED_STORAGES = ("etcd", "etcd2", "postgres")
PHASES = ("register", "heartbeat", "reregister")
#: Registry timings of the served Kontrol (seconds): heartbeats are due every 10 s, so the bench's
#: faster ones never find a kite expired.
TIMINGS = {"heartbeat_interval": 10.0, "update_interval": 60.0, "key_ttl": 90.0}

#: One ``POST /register`` per request: a new kite each time (thread t, request n: id ...-t-n), or with
#: the register phase's ``thread:count`` pairs the same kites again (a Kontrol restart's wave).
REGISTER_LUA = """
-- globals: the main state's done() reads them from each thread (thread:get)
counter, good, bad = 0, 0, 0
local threads = {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  key, run = args[1], args[2]
  if args[3] then  -- re-register the kites phase 1 registered (thread:count pairs, less the last ``cut``)
    for pair in string.gmatch(args[3], "[^,]+") do
      local t, count = string.match(pair, "(%d+):(%d+)")
      if tonumber(t) == tid then again = tonumber(count) - tonumber(args[4]) - 1 end
    end
  end
end
function request()
  -- a new kite each time, or (re-register) the next of this thread's kites 2 .. count - cut
  counter = counter + 1
  local n = again and (counter - 1) % again + 2 or counter
  local id = string.format("%s-%04x-4000-8000-%012x", run, tid, n)
  local body = string.format(
    '{"url":"http://h%d.example:4001/kite","kite":{"name":"svc%05d","username":"%s","id":"%s",' ..
    '"environment":"%s","region":"%s","version":"%s","hostname":"h%d-%d"},' ..
    '"auth":{"type":"kiteKey","key":"%s"}}',
    n, math.floor((tid * 1000000 + n) / 100), "@USER@", id, "@ENV@", "@REGION@", "@VERSION@",
    tid, n, key)
  return wrk.format("POST", "/register", {["Content-Type"] = "application/json"}, body)
end
function response(status, headers, body)
  if status == 200 and string.find(body, "heartbeatInterval", 1, true) then good = good + 1 else
    bad = bad + 1
    if bad <= 2 then io.write(string.format("BAD %d %s\\n", status, string.sub(body, 1, 200))) end
  end
end
function done(summary, latency, requests)
  local g, b, ids = 0, 0, {}
  for _, t in ipairs(threads) do
    g = g + t:get("good"); b = b + t:get("bad")
    table.insert(ids, t:get("tid") .. ":" .. t:get("counter"))
  end
  io.write(string.format("RESULT good=%d bad=%d p50=%d p99=%d ids=%s\\n", g, b,
    latency:percentile(50), latency:percentile(99), table.concat(ids, ",")))
end
""".replace("@USER@", USER).replace("@ENV@", ENVIRONMENT).replace("@REGION@", REGION).replace("@VERSION@", VERSION)

#: ``GET /heartbeat?id=`` over the kites the register phase made (``thread:count`` pairs).
HEARTBEAT_LUA = """
counter, good, bad = 0, 0, 0
local threads, ids = {}, {}
function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  local run, cut = args[1], tonumber(args[3])
  for pair in string.gmatch(args[2], "[^,]+") do
    local t, count = string.match(pair, "(%d+):(%d+)")
    -- a thread beats the kites it registered, but for its first request (wrk builds one before it
    -- starts, never sent) and its last ``cut`` (maybe in flight when phase 1 ended: not registered)
    if tonumber(t) == tid then
      for i = 2, tonumber(count) - cut do
        table.insert(ids, string.format("/heartbeat?id=%s-%04x-4000-8000-%012x", run, tid, i))
      end
    end
  end
end
function request()
  counter = counter % #ids + 1
  return wrk.format("GET", ids[counter])
end
function response(status, headers, body)
  if status == 200 and body == "pong" then good = good + 1 else
    bad = bad + 1
    if bad <= 2 then io.write(string.format("BAD %d %s %s of %d\\n", status, string.sub(body, 1, 200),
      ids[counter] or "?", #ids)) end
  end
end
function done(summary, latency, requests)
  local g, b = 0, 0
  for _, t in ipairs(threads) do g = g + t:get("good"); b = b + t:get("bad") end
  io.write(string.format("RESULT good=%d bad=%d p50=%d p99=%d\\n", g, b,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class Phase:
    """One wrk phase of one run."""

    good: int = 0
    bad: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    cpu: dict[str, float | None] = field(default_factory=dict)
    #: The register phase's kites: ``thread:requests`` per wrk thread (the ids the heartbeats use).
    ids: str = ""

    @property
    def rate(self) -> float:
        return self.good / self.seconds if self.seconds else 0.0

    @property
    def per_core(self) -> float | None:
        """Calls per second of Kontrol CPU (all its processes): the same in both modes if it scales."""
        cpu = self.cpu.get("kontrol")
        return self.rate / (cpu / 100) if cpu else None


def run_wrk(script: Path, url: str, seconds: float, connections: int, threads: int, *args: str) -> tuple[dict, str]:
    """wrk's RESULT line as a dict, and its whole output."""
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
           "-s", str(script), url, "--", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    line = next((x for x in out.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no RESULT:\n{out[-2000:]}")
    return dict(re.findall(r"(\w+)=(\S+)", line)), out


def with_children(pids: list[int]) -> list[int]:
    """``pids`` and their children now (PostgreSQL's backends are the postmaster's)."""
    found = list(pids)
    for pid in pids:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            pass
    return found


class TreeCpu:
    """The CPU % of processes and their children (children born meanwhile count whole)."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.start, self.t0 = self._seconds(), time.monotonic()

    def _seconds(self) -> dict[int, float]:
        found = {}
        for pid in with_children(self.pids):
            try:
                found[pid] = common.cpu_seconds(pid)
            except OSError:
                pass
        return found

    def percent(self) -> float:
        now, seconds = self._seconds(), time.monotonic() - self.t0
        return sum(cpu - self.start.get(pid, 0.0) for pid, cpu in now.items()) / seconds * 100


def measure(script: Path, url: str, opts: argparse.Namespace, pids: dict[str, list[int]], profile: str,
            *args: str) -> Phase:
    """One wrk phase; with ``--py-spy DIR`` each Kontrol process sampled into ``DIR/<profile>-<pid>.txt``."""
    meters = {name: TreeCpu(p) for name, p in pids.items() if p}
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with contextlib.ExitStack() as sampling:
        plan = Plan(kites=0, quick=False, timings=TIMINGS, seconds=0, ws_kites=0, rounds=1, pin=False,
                    py_spy=opts.py_spy)
        for pid in pids["kontrol"]:
            sampling.enter_context(profiled(plan, pid, f"{profile}-{pid}"))
        result, out = run_wrk(script, url, opts.seconds, opts.connections, opts.threads, *args)
    for line in [x for x in out.splitlines() if x.startswith("BAD ")][:2] + [
            x.strip() for x in out.splitlines() if "Socket errors" in x]:
        print(f"  {line}", flush=True)
    seconds = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk's, once it exited
    phase = Phase(good=int(result["good"]), bad=int(result["bad"]), seconds=seconds,
                  p50_ms=int(result["p50"]) / 1000, p99_ms=int(result["p99"]) / 1000)
    phase.cpu = {name: meter.percent() for name, meter in meters.items()}
    wrk_cpu = after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime
    phase.cpu["wrk"] = wrk_cpu / seconds * 100
    phase.ids = result.get("ids", "")
    return phase


class Unsupported(Exception):
    """This version of the code cannot serve that storage."""


def one_run(kind: str, workers: int, sites: Sites, tree: Any, scripts: dict[str, Path],
            opts: argparse.Namespace) -> dict[str, Phase]:
    run = uuid.uuid4().hex[:8]
    location = sites.open(kind, run)
    tree.workers = workers
    plan = Plan(kites=0, quick=False, timings=TIMINGS, seconds=opts.seconds, ws_kites=0, rounds=1, pin=False)
    kontrol = KontrolProcess(tree, location, plan)
    try:
        if "unsupported" in kontrol.info:
            raise Unsupported(kontrol.info["unsupported"])
        url = f"http://{common.HOST}:{kontrol.info['port']}"
        pids = {"kontrol": kontrol.pids, "storage": storage_pids(sites, kind)}
        profile = f"{kind}-{tree.name}-w{workers}-{run}"
        register = measure(scripts["register"], url, opts, pids, f"{profile}-register", kontrol.info["kite_key"], run)
        ids = register.ids
        cut = 2 * -(-opts.connections // opts.threads)  # twice the connections per wrk thread
        heartbeat = measure(scripts["heartbeat"], url, opts, pids, f"{profile}-heartbeat", run, ids, str(cut))
        again = measure(scripts["register"], url, opts, pids, f"{profile}-reregister", kontrol.info["kite_key"], run,
                        ids, str(cut))
        return {"register": register, "heartbeat": heartbeat, "reregister": again}
    finally:
        kontrol.stop()
        sites.clear(kind, run, location)  # the next run gets a fresh etcd / database


def storage_pids(sites: Sites, kind: str) -> list[int]:
    if kind in ("etcd", "etcd2") and sites.etcd is not None:
        return [sites.etcd.proc.pid]
    if kind == "postgres" and sites.postgres is not None:
        return [sites.postgres.server.process.pid]  # the postmaster (its backends are children)
    return []


def describe(phase: Phase) -> str:
    cpu = ", ".join(f"{k} {v:.0f} %" for k, v in phase.cpu.items() if v is not None)
    per_core = f"; {phase.per_core:,.0f} per Kontrol CPU-second" if phase.per_core else ""
    return (f"{phase.rate:,.0f}/s (p50 {phase.p50_ms:.1f} ms, p99 {phase.p99_ms:.1f} ms; bad {phase.bad}; "
            f"CPU {cpu}{per_core})")


@dataclass
class Contender:
    """One column: a version of the code served by ``workers`` processes."""

    label: str
    tree: Any
    workers: int
    runs: list[dict[str, Phase]] = field(default_factory=list)
    unsupported: str = ""


def ratio_cell(a: Contender, b: Contender, name: str) -> str:
    """``a`` / ``b`` on phase ``name``: median (min-max) of the per-round ratios."""
    per_round = [x[name].rate / y[name].rate for x, y in zip(a.runs, b.runs, strict=False) if y[name].rate]
    if not per_round:
        return "n/a"
    return f"{statistics.median(per_round):.2f}x ({min(per_round):.2f}-{max(per_round):.2f})"


def rate_cell(c: Contender, name: str) -> str:
    return f"{statistics.median(run[name].rate for run in c.runs):,.0f}" if c.runs else "n/a"


def cpu_cell(c: Contender, name: str) -> str:
    if not c.runs:
        return "n/a"
    parts = [statistics.median(run[name].cpu.get(part) or 0 for run in c.runs)
             for part in ("kontrol", "storage", "wrk")]
    return " / ".join(f"{x:.0f}" for x in parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", default="etcd,etcd2,postgres", help="comma-separated: etcd,etcd2,postgres")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="the all-cores runs (default: CPUs)")
    ap.add_argument("--baseline", default=None, help="also one process of this commit (e.g. 8e8e5a0)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="per phase (whole seconds)")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None,
                    help="wrk threads (default: one per connection, so that a kite registers and heartbeats over "
                         "one connection, as a real one does: with workers, one worker serves all of it)")
    ap.add_argument("--py-spy", type=Path, metavar="DIR", default=None,
                    help="py-spy record every Kontrol process over each phase into DIR (raw collapsed stacks)")
    opts = ap.parse_args()
    opts.threads = opts.threads or opts.connections
    if opts.py_spy is not None:
        opts.py_spy.mkdir(parents=True, exist_ok=True)
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install wrk)")
    install_cleanup()
    scratch = scratch_dir()
    scripts = {"register": scratch / "register.lua", "heartbeat": scratch / "heartbeat.lua"}
    scripts["register"].write_text(REGISTER_LUA)
    scripts["heartbeat"].write_text(HEARTBEAT_LUA)
    current = current_tree()
    sites = Sites(scratch, unpin_it=False)
    print(f"# kontrol_wrk: {current.label}; {opts.rounds} rounds x {opts.seconds:g} s per phase; wrk "
          f"-t{opts.threads} -c{opts.connections}; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}", flush=True)
    summary = []
    for kind in [k for k in opts.storage.split(",") if k]:
        if kind not in SHARED_STORAGES:
            sys.exit(f"--storage: {kind!r} is not a storage several workers share ({', '.join(SHARED_STORAGES)})")
        sites.start(kind)
        one = Contender("current", current, 1)
        many = Contender(f"current x{opts.workers}", current, opts.workers)
        contenders = [one, many]
        if opts.baseline:
            contenders.append(Contender(f"baseline {opts.baseline}", baseline_tree(opts.baseline), 1))
        for r in range(opts.rounds):
            for c in contenders if r % 2 == 0 else contenders[::-1]:
                if c.unsupported:
                    continue
                try:
                    result = one_run(kind, c.workers, sites, c.tree, scripts, opts)
                except Unsupported as e:
                    c.unsupported = str(e)
                    print(f"[{kind} {c.label}] not supported by that version: {e}", flush=True)
                    continue
                c.runs.append(result)
                print(f"[{kind} r{r + 1} {c.label}] " + "; ".join(f"{name} {describe(result[name])}"
                                                                   for name in PHASES), flush=True)
        for name in PHASES:
            rates = " | ".join(rate_cell(c, name) for c in contenders)
            cpus = " | ".join(cpu_cell(c, name) for c in contenders)
            versus = f" | {ratio_cell(one, contenders[2], name)}" if opts.baseline else ""
            summary.append(f"| {kind} | {name} | {rates} | {ratio_cell(many, one, name)}{versus} | {cpus} |")
        labels = [c.label for c in contenders]
    heads = " | ".join(f"{label} (calls/s)" for label in labels)
    versus = " | current / baseline" if opts.baseline else ""
    cpus = " | ".join(f"CPU % Kontrol / storage / wrk: {label}" for label in labels)
    print(f"\n| storage | endpoint | {heads} | x{opts.workers} / one{versus} | {cpus} |")
    print("|---" * (3 + len(labels) + (2 if opts.baseline else 1) + len(labels) - 1) + "|")
    print("\n".join(summary))
    print("ratios: median (min-max) of the per-round ratios")
    sites.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
