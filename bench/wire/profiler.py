"""Sampling profile of the server with py-spy, summarised by pipeline stage.

``py-spy record --threads --format raw`` writes one collapsed stack per line,
rooted at ``thread (<tid>): <thread name>``, with the number of samples.
Without ``--idle`` only stacks of threads the kernel reports runnable count.
Each sample is attributed to a stage: the inference threads by their names
(``stt-whisper``, ``llm-llama``, ``tts-piper``, ``vad``), other threads (the
asyncio event loop, the executor that encodes Opus, the audio decoder) by
the innermost frame that belongs to a known package (aiortc/PyAV for the
WebRTC transport, ``agent``, ``media``, the HTTP stack, asyncio). The CPU
seconds themselves come from ``/proc/<pid>/task/<tid>/stat``: the samples
only split each thread's measured CPU time between stages and functions.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

THREAD_STAGES = (
    ("stt-whisper", "STT (whisper thread)"),
    ("llm-llama", "LLM (llama thread)"),
    ("tts-piper", "TTS (piper thread)"),
    ("vad", "VAD (silero thread)"),
)
FRAME_STAGES = (
    ("aiortc/", "WebRTC transport (aiortc, Opus, RTP, DTLS)"),
    ("av/", "WebRTC transport (aiortc, Opus, RTP, DTLS)"),
    ("aioice/", "WebRTC transport (aiortc, Opus, RTP, DTLS)"),
    ("media/", "media (playout, resampling, frames)"),
    ("agent/", "agent session (turns, events, chunker)"),
    ("signaling/", "signaling (calls, events to data channel)"),
    ("uvicorn/", "HTTP (uvicorn, FastAPI)"),
    ("starlette/", "HTTP (uvicorn, FastAPI)"),
    ("fastapi/", "HTTP (uvicorn, FastAPI)"),
    ("asyncio/", "asyncio scheduling"),
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
_THREAD = re.compile(r"^thread \((?P<tid>\d+)\)(?::\s*(?P<name>.*))?$")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def py_spy() -> str | None:
    """The py-spy binary (next to this Python, or on the PATH)."""
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else shutil.which("py-spy")


def _stage(thread_name: str, frames: list[str]) -> str:
    for prefix, stage in THREAD_STAGES:
        if thread_name.startswith(prefix):
            return stage
    for frame in reversed(frames):
        m = _FRAME.match(frame)
        path = m.group("file") if m else frame
        if path.endswith("asyncio/runners.py"):
            return "event loop: uvloop native (sockets, timers, callbacks)"
        for marker, stage in FRAME_STAGES:
            if marker in path:
                return stage
    return f"other: {thread_name}"


def pool_name(thread_name: str) -> str:
    """A thread's name without its index in its pool (``vad-0`` -> ``vad``, ``uvloop_1``)."""
    return re.sub(r"[-_]\d+$", "", thread_name)


NATIVE = "native threads without Python frames (CTranslate2's STT worker, ONNX pools)"
_DUMP_THREAD = re.compile(r'^Thread (?P<tid>\d+) \([^)]*\): "(?P<name>[^"]*)"')


def thread_names(pid: int) -> dict[int, str]:
    """tid -> Python thread name, from ``py-spy dump`` (empty without py-spy)."""
    exe = py_spy()
    if exe is None:
        return {}
    try:
        res = subprocess.run(
            [exe, "dump", "--pid", str(pid), "--nonblocking"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out: dict[int, str] = {}
    for line in res.stdout.splitlines():
        if m := _DUMP_THREAD.match(line):
            out[int(m.group("tid"))] = pool_name(m.group("name"))
    return out


def cpu_by_thread(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    names: dict[int, str],
    seconds: float,
) -> dict[str, float]:
    """% of one core used by each named thread (threads of one pool summed) in a window."""
    out: defaultdict[str, float] = defaultdict(float)
    for tid, (_, cpu) in after.items():
        used = cpu - before.get(tid, ("", 0.0))[1]
        if used > 0:
            out[names.get(tid, NATIVE)] += 100 * used / max(seconds, 1e-6)
    return {k: round(v, 1) for k, v in _by_value(out)}


def _by_value(d: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(d.items(), key=lambda kv: kv[1], reverse=True)


def thread_cpu(pid: int) -> dict[int, tuple[str, float]]:
    """CPU seconds of every thread of a process: tid -> (comm, seconds)."""
    out: dict[int, tuple[str, float]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        out[int(tid)] = (comm, (int(fields[11]) + int(fields[12])) / _CLK_TCK)
    return out


def summarise(
    raw: Path,
    rate: int,
    seconds: float,
    cpu_before: dict[int, tuple[str, float]],
    cpu_after: dict[int, tuple[str, float]],
    top: int = 15,
) -> dict[str, Any]:
    """CPU per stage, per thread and per hottest function of a raw py-spy profile.

    py-spy counts a thread as active when the kernel reports it runnable,
    which on a busy 2-core machine includes time spent waiting for a core,
    so its samples are only used to split each thread's *measured* CPU time
    (``/proc/<pid>/task/<tid>/stat`` before and after) between stages and
    functions.
    """
    samples: dict[int, Counter[str]] = {}
    leaves: dict[int, Counter[str]] = {}
    names: dict[int, str] = {}
    for line in raw.read_text("utf-8", "replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        frames = stack.split(";")
        m = _THREAD.match(frames[0])
        if m is None:
            continue
        tid = int(m.group("tid"))
        name = pool_name((m.group("name") or "").strip()) or f"tid {tid}"
        names[tid] = name
        count = int(count_text)
        samples.setdefault(tid, Counter())[_stage(name, frames[1:])] += count
        leaf = frames[-1] if len(frames) > 1 else "?"
        leaves.setdefault(tid, Counter())[f"{name} | {leaf}"] += count
    used: dict[int, float] = {}
    for tid, (_, after) in cpu_after.items():
        before = cpu_before.get(tid, ("", 0.0))[1]
        if after - before > 0:
            used[tid] = after - before
    stages: defaultdict[str, float] = defaultdict(float)
    hot: defaultdict[str, float] = defaultdict(float)
    threads: defaultdict[str, float] = defaultdict(float)
    for tid, cpu in used.items():
        name = names.get(tid) or NATIVE
        threads[name] += cpu
        counts = samples.get(tid)
        if not counts:
            stages[f"other: {name}"] += cpu
            continue
        total = sum(counts.values())
        for stage, n in counts.items():
            stages[stage] += cpu * n / total
        for where, n in leaves[tid].items():
            hot[where] += cpu * n / total
    total_cpu = sum(used.values())

    def fmt(value: float) -> dict[str, float]:
        return {
            "cpu_s": round(value, 2),
            "cpu_pct_of_core": round(100 * value / max(seconds, 1e-6), 1),
            "share_pct": round(100 * value / max(total_cpu, 1e-9), 1),
        }

    return {
        "seconds": round(seconds, 1),
        "rate_hz": rate,
        "samples": sum(sum(c.values()) for c in samples.values()),
        "cpu_s": round(total_cpu, 1),
        "cpu_pct_of_core": round(100 * total_cpu / max(seconds, 1e-6), 1),
        "stages": {k: fmt(v) for k, v in _by_value(stages)},
        "threads": {k: fmt(v) for k, v in _by_value(threads)},
        "hot_functions": [{"where": k, **fmt(v)} for k, v in _by_value(hot)[:top]],
    }


class Profiler:
    """``py-spy record`` attached to a running process until ``stop()``."""

    def __init__(self, pid: int, out: Path, rate: int = 50, max_s: int = 1800) -> None:
        self.pid = pid
        self.out = out
        self.rate = rate
        self.max_s = max_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._t0 = 0.0
        self._cpu0: dict[int, tuple[str, float]] = {}

    def start(self) -> bool:
        """Start sampling; False if py-spy is not installed."""
        exe = py_spy()
        if exe is None:
            return False
        cmd = [exe, "record", "--pid", str(self.pid), "--rate", str(self.rate)]
        cmd += ["--duration", str(self.max_s), "--format", "raw", "--threads"]
        cmd += ["--nonblocking", "--output", str(self.out)]
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._cpu0 = thread_cpu(self.pid)
        self._t0 = time.monotonic()
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return True

    async def stop(self) -> dict[str, Any] | None:
        """Stop sampling (SIGINT makes py-spy write its output) and summarise."""
        proc = self._proc
        if proc is None:
            return None
        seconds = time.monotonic() - self._t0
        cpu1 = thread_cpu(self.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            await asyncio.to_thread(proc.wait, 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return {"error": "py-spy did not stop"}
        if not self.out.exists():
            err = proc.stderr.read().decode("utf-8", "replace") if proc.stderr else ""
            return {"error": f"py-spy wrote no profile: {err.strip()[-300:]}"}
        summary = summarise(self.out, self.rate, seconds, self._cpu0, cpu1)
        summary["raw"] = str(self.out)
        return summary
