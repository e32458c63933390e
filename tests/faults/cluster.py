"""A 3-member etcd cluster on loopback for the fault tests: members killed, restarted, the leader found.

Each member is Debian's ``etcd`` (3.4, the v2 API enabled) on free 127.0.0.1 ports, its data
dir on tmpfs (``/dev/shm``) when there is one: etcd fsyncs each write, which costs nothing there.
:meth:`EtcdCluster.kill` is a crash (SIGKILL); :meth:`EtcdCluster.restart` starts the member again
on the same ports and data. :meth:`EtcdCluster.leader` asks each live member's v3 maintenance
status API who leads. A missing ``etcd`` fails the tests (see ``tests.kontrol.conftest.etcd_binary``).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import requests

from tests.etcd_health import wait_until_healthy
from tests.kontrol.conftest import etcd_binary, free_port

#: Members of the cluster: the smallest that survives losing one.
CLUSTER_SIZE = 3
#: Raft timings. Short, so a new leader is elected within ~1-2 s of the old one's death, but not
#: as short as the single-node tests' (50/500 ms): three members on two loaded cores must not
#: hold elections for nothing. etcd's minimum lease TTL is then 1.5 election timeouts (2 s).
HEARTBEAT_MS = 100
ELECTION_MS = 1000
#: Seconds a member may take to be healthy after starting (with its peers, when it needs a quorum).
START_TIMEOUT = 30.0
#: Seconds a killed member may take to be reaped.
KILL_TIMEOUT = 10.0
#: Seconds the cluster may take to agree on a leader (an election or two).
LEADER_TIMEOUT = 20.0
#: Timeout of one status request to a member.
STATUS_TIMEOUT = 1.0


class Member:
    """One etcd member: its name, ports, data dir and process."""

    def __init__(self, name: str, scratch: Path) -> None:
        self.name = name
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = scratch / name
        self.log_path = scratch / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL (v2 and v3 APIs)."""
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, initial_cluster: str) -> None:
        """Start the process (not waiting for it to be healthy)."""
        args = [
            etcd_binary(),
            f"--name={self.name}",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={self.peer_url}",
            f"--initial-advertise-peer-urls={self.peer_url}",
            f"--initial-cluster={initial_cluster}",
            "--initial-cluster-state=new",  # ignored on a restart: the data dir knows the cluster
            "--initial-cluster-token=kite-faults",
            "--enable-v2=true",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()

    def kill(self) -> None:
        """SIGKILL (a crash) and reap; the data dir stays."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=KILL_TIMEOUT)
        self.process = None

    def status(self) -> tuple[int, int] | None:
        """``(own member id, leader's member id)`` from the v3 maintenance status API; None when the member
        does not answer or knows no leader."""
        try:
            answer = requests.post(self.url + "/v3/maintenance/status", json={}, timeout=STATUS_TIMEOUT).json()
            own, leader = int(answer["header"]["member_id"]), int(answer.get("leader") or 0)
        except (requests.RequestException, ValueError, KeyError, TypeError):
            return None
        return (own, leader) if leader else None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


class EtcdCluster:
    """:data:`CLUSTER_SIZE` etcd members on 127.0.0.1 under ``scratch``."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.members = [Member(f"m{i}", scratch) for i in range(CLUSTER_SIZE)]
        self._initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    @property
    def endpoints(self) -> str:
        """``host:port,host:port,...`` of every member (a storage URL's netloc, ``--machines``)."""
        return ",".join(f"127.0.0.1:{m.client_port}" for m in self.members)

    def storage_url(self, kind: str, prefix: str) -> str:
        """The Kontrol storage URL of backend ``kind`` (etcd, etcd2) naming every member."""
        return f"{kind}://{self.endpoints}/{prefix.lstrip('/')}"

    def start(self) -> None:
        """Start every member; return once each is healthy."""
        for member in self.members:
            member.start(self._initial_cluster)
        self.wait_healthy(self.members)

    def wait_healthy(self, members: list[Member]) -> None:
        for member in members:
            assert member.process is not None
            failure = wait_until_healthy(member.url, member.process, START_TIMEOUT)
            if failure is not None:
                pytest.fail(f"etcd member {member.name}: {failure}:\n{member.log_tail()}", pytrace=False)

    def kill(self, member: Member) -> None:
        member.kill()

    def restart(self, member: Member, wait: bool = True) -> None:
        """Start a killed member again (same ports and data); ``wait``: until it is healthy (which needs a
        quorum: restart a member of a cluster without one with ``wait=False``, then :meth:`wait_healthy`)."""
        member.start(self._initial_cluster)
        if wait:
            self.wait_healthy([member])

    def running(self) -> list[Member]:
        return [m for m in self.members if m.running]

    def leader(self, timeout: float = LEADER_TIMEOUT) -> Member:
        """The member the running members agree leads (waits for an election)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ids: dict[int, Member] = {}
            leaders = set()
            for member in self.running():
                status = member.status()
                if status is not None:
                    ids[status[0]] = member
                    leaders.add(status[1])
            if len(leaders) == 1 and (leader := leaders.pop()) in ids and len(ids) == len(self.running()):
                return ids[leader]
            gevent.sleep(0.05)
        pytest.fail(f"no agreed etcd leader within {timeout:g} s", pytrace=False)

    def followers(self) -> list[Member]:
        leader = self.leader()
        return [m for m in self.running() if m is not leader]

    def keys(self, prefix: str) -> list[str]:
        """The v3 keys under ``prefix``, read (linearizably) from any running member."""
        key = base64.b64encode(prefix.encode()).decode()
        end = base64.b64encode(prefix[:-1].encode() + bytes([prefix.encode()[-1] + 1])).decode()
        for member in self.running():
            try:
                answer = requests.post(member.url + "/v3/kv/range", json={"key": key, "range_end": end,
                                                                          "keys_only": True}, timeout=2).json()
            except (requests.RequestException, ValueError):
                continue
            if "kvs" in answer or "header" in answer:
                return [base64.b64decode(kv["key"]).decode() for kv in answer.get("kvs") or []]
        raise AssertionError("no etcd member answered")

    def stop(self) -> None:
        """Kill every member."""
        for member in self.members:
            member.kill()


def scratch_dir() -> Path:
    """A new directory for the members' data: on tmpfs when there is one."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="kite-faults-etcd-", dir=shm))


def running_cluster() -> Iterator[EtcdCluster]:
    """A started cluster for a fixture to yield; always killed and its data removed afterwards."""
    scratch = scratch_dir()
    cluster = EtcdCluster(scratch)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(scratch, ignore_errors=True)
