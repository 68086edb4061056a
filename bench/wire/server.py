"""The server under test: ``python -m signaling`` as a subprocess on a loopback port.

``ServerProcess`` starts it with the embedded defaults (or an agent YAML),
measures the time to ready by polling ``/health``, and stops it.
``ProcStats`` reads a process's CPU time, RSS, open file descriptors and
threads from ``/proc`` (Linux); ``Monitor`` samples them in the background so
a scenario can take the CPU use and peak RSS of any time window;
``machine_cpu_s`` reads the whole machine's (other work shares it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    """An unused TCP port on the loopback address."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def free_sip_port(avoid: int = 0) -> int:
    """A loopback port free for both TCP and UDP (SIP listens on both), not ``avoid``."""
    for _ in range(50):
        port = free_port()
        if port == avoid:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            try:
                udp.bind((HOST, port))
            except OSError:
                continue
            return port
    raise ServerError("no loopback port free for SIP")


RTP_SPAN = 200
"""Ports of a benchmark server's RTP range (one call at a time needs two)."""


def free_rtp_range(span: int = RTP_SPAN) -> tuple[int, int]:
    """A range of loopback UDP ports away from the defaults (10000-20000) and the tests'.

    Picked at random in 40000-59999 and probed at its first ports, so two
    benchmark servers (or a benchmark beside the tests) rarely share one;
    the server skips a taken port of its range anyway.
    """
    for _ in range(50):
        low = 40_000 + 2 * secrets.randbelow((20_000 - span) // 2)
        try:
            for port in range(low, low + 4):
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind((HOST, port))
        except OSError:
            continue
        return low, low + span - 1
    raise ServerError("no free RTP port range")


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One reading of a process's resources."""

    t: float
    """Monotonic time of the reading."""
    cpu_s: float
    """User + system CPU seconds since the process started (all threads)."""
    rss_mb: float
    fds: int
    threads: int


def read_proc(pid: int) -> ProcSample:
    """Read ``/proc/<pid>``: CPU time, resident memory, open descriptors, threads."""
    t = time.monotonic()
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
    threads = int(fields[17])
    rss_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return ProcSample(t, cpu, rss_pages * _PAGE / 2**20, fds, threads)


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (the workers of a supervisor)."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        with contextlib.suppress(OSError):
            out += [int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split()]
    return out


def read_tree(pid: int) -> ProcSample:
    """``read_proc`` summed over ``pid`` and its child processes (a supervisor's workers)."""
    total = read_proc(pid)
    for child in children(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            s = read_proc(child)
            total = ProcSample(
                total.t,
                total.cpu_s + s.cpu_s,
                total.rss_mb + s.rss_mb,
                total.fds + s.fds,
                total.threads + s.threads,
            )
    return total


def machine_cpu_s() -> float:
    """CPU seconds every process of the machine used since boot (all cores, from /proc/stat).

    Busy time is user, nice, system, irq and softirq; idle, iowait and steal are not.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:8]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields)
    return (user + nice + system + irq + softirq) / _CLK_TCK


class Monitor:
    """Samples a process and its children every ``period_s`` seconds in a background task."""

    def __init__(self, pid: int, period_s: float = 0.5) -> None:
        self.pid = pid
        self.period_s = period_s
        self.samples: list[ProcSample] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Monitor:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(OSError, ValueError, IndexError):
                self.samples.append(read_tree(self.pid))
            await asyncio.sleep(self.period_s)

    def now(self) -> ProcSample:
        """A fresh reading."""
        sample = read_tree(self.pid)
        self.samples.append(sample)
        return sample

    def window(self, start: float, end: float) -> dict[str, float | None]:
        """CPU use (% of one core), mean and peak RSS over ``[start, end]``."""
        inside = [s for s in self.samples if start <= s.t <= end]
        if len(inside) < 2:
            return {"cpu_pct": None, "rss_mean_mb": None, "rss_peak_mb": None}
        first, last = inside[0], inside[-1]
        cpu = 100.0 * (last.cpu_s - first.cpu_s) / max(last.t - first.t, 1e-6)
        return {
            "cpu_pct": round(cpu, 1),
            "rss_mean_mb": round(sum(s.rss_mb for s in inside) / len(inside), 1),
            "rss_peak_mb": round(max(s.rss_mb for s in inside), 1),
        }


class ServerError(RuntimeError):
    """The server did not start or died."""


class ServerProcess:
    """``python -m signaling`` on a free loopback port.

    With ``sip=True`` it also takes phone calls: SIP (UDP and TCP) on another
    free loopback port (``sip_address``), RTP on a range of its own
    (``rtp_ports``), and an admin token (``admin_token``) to read the SIP
    calls' sessions and histories, which have no caller token. ``env`` adds
    to the inherited environment (e.g. provider chains, keys and endpoints).
    """

    def __init__(
        self,
        *,
        config: Path | None,
        log_path: Path,
        max_calls: int = 32,
        idle_timeout_s: float = 300.0,
        python: str = sys.executable,
        cwd: Path | None = None,
        sip: bool = False,
        env: Mapping[str, str] | None = None,
        workers: int = 1,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.port = free_port()
        self.base_url = f"http://{HOST}:{self.port}"
        self.max_calls = max_calls
        self.idle_timeout_s = idle_timeout_s
        self.python = python
        self.cwd = cwd
        self.env = dict(env or {})
        self.proc: asyncio.subprocess.Process | None = None
        self.ready_s: float | None = None
        self.health: dict[str, object] = {}
        self.sip_port = free_sip_port(avoid=self.port) if sip else None
        self.rtp_ports = free_rtp_range() if sip else None
        self.admin_token = secrets.token_urlsafe(24) if sip else None
        self.workers = workers

    @property
    def sip_address(self) -> tuple[str, int]:
        """Where the server takes SIP calls (``sip=True`` only)."""
        if self.sip_port is None:
            raise ServerError("server started without SIP")
        return HOST, self.sip_port

    @property
    def pid(self) -> int:
        """The server's process id (the supervisor's, with several workers)."""
        if self.proc is None:
            raise ServerError("server not started")
        return self.proc.pid

    def pids(self) -> list[int]:
        """The processes that carry calls: the workers, or the server itself."""
        return (children(self.pid) or [self.pid]) if self.workers > 1 else [self.pid]

    def command(self) -> list[str]:
        """The server's command line (``python -m signaling`` on ``port``)."""
        cmd = [self.python, "-m", "signaling", "--host", HOST, "--port", str(self.port)]
        cmd += ["--log-level", os.environ.get("PARLEY_BENCH_LOG_LEVEL", "warning")]
        cmd += ["--workers", str(self.workers)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return cmd

    async def start(self, timeout_s: float = 180.0) -> float:
        """Spawn the server and poll ``/health`` until it answers; returns seconds to ready."""
        cmd = self.command()
        env = {
            **os.environ,
            **self.env,
            "PARLEY_MAX_CALLS": str(self.max_calls),
            "PARLEY_IDLE_TIMEOUT_S": str(self.idle_timeout_s),
            "PYTHONUNBUFFERED": "1",
        }
        # A store of its own per server: the embedded SQLite file and its TTS phrase
        # cache start empty, and the repository's ./data is left alone.
        env.setdefault("PARLEY_DATA_DIR", str(self.log_path.parent / f"data-{self.port}"))
        # Several servers run at once: SIP only where a scenario asks for it (its own port).
        env.setdefault("PARLEY_SIP_LISTEN", "off")
        # The benchmark measures load, not the rate limits: one client address places
        # far more calls and requests a minute than the limits allow a caller.
        for bucket in ("CREATE", "OFFER", "CHAT", "VOICE"):
            env.setdefault(f"PARLEY_RATE_LIMIT_{bucket}", "off")
        if self.sip_port is not None and self.rtp_ports is not None and self.admin_token:
            env["PARLEY_SIP_LISTEN"] = f"{HOST}:{self.sip_port}"
            env["PARLEY_RTP_PORTS"] = f"{self.rtp_ports[0]}-{self.rtp_ports[1]}"
            env["PARLEY_SIP_ALLOW"] = '["127.0.0.0/8"]'  # JSON: a list setting
            env["PARLEY_ADMIN_TOKEN"] = self.admin_token
            env.pop("PARLEY_SIP_USERS", None)  # the benchmark's phone does no digest auth
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.cwd
            )
        # A new connection per poll: each may land on another worker, and the server
        # is ready when every worker has answered.
        fresh = httpx.Limits(max_keepalive_connections=0)
        ready: set[int] = set()
        async with httpx.AsyncClient(base_url=self.base_url, timeout=2.0, limits=fresh) as client:
            while time.monotonic() - t0 < timeout_s:
                if self.proc.returncode is not None:
                    raise ServerError(f"server exited with {self.proc.returncode}: {self.tail()}")
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    r = await client.get("/health")
                    if r.status_code == 200:
                        health = r.json()
                        ready.add(int(health.get("worker", {}).get("index", 0)))
                        if len(ready) >= self.workers:
                            self.ready_s = time.monotonic() - t0
                            self.health = health
                            return self.ready_s
                await asyncio.sleep(0.05)
        await self.stop()
        raise ServerError(f"server not ready within {timeout_s} s: {self.tail()}")

    def tail(self, lines: int = 20) -> str:
        """The end of the server's log."""
        try:
            return "\n".join(self.log_path.read_text("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGINT (graceful shutdown), then SIGKILL past ``timeout_s``; returns the exit code."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return None if proc is None else proc.returncode
        proc.send_signal(signal.SIGINT)
        try:
            return await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            proc.kill()
            return await proc.wait()

    async def wait_idle(self, client: httpx.AsyncClient, timeout_s: float = 10.0) -> bool:
        """Wait until the server reports no active call."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                r = await client.get("/health")
                health = r.json()
                busy = health.get("active_calls_all_workers", health.get("active_calls"))
                if r.status_code == 200 and busy == 0:
                    return True
            await asyncio.sleep(0.1)
        return False
