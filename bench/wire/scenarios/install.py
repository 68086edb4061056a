"""Install: the README set-up in a fresh clone, timed, and the server's time to ready.

The repository's committed ``HEAD`` is cloned into a temporary directory and
``scripts/setup.sh`` (what ``scripts/run.sh`` runs first, per the README)
creates its ``.venv`` from scratch: a clean virtual environment, with pip's
cache as this machine has it (warm after the project was installed once:
``llama-cpp-python`` comes from the cached wheel instead of a ~10 min
compile). Then the server of that fresh install is started twice and the
time to ready (process start -> ``/health`` answers) is measured: the first
start compiles the bytecode, the second is a warm restart. Everything is
bounded by timeouts and the clone is removed afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.wire.server import ServerError, ServerProcess


def _du_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return round(total / 2**20, 1)


async def _run(cmd: list[str], cwd: Path, env: dict[str, str], log: Path, limit_s: float) -> int:
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            return await asyncio.wait_for(proc.wait(), limit_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise


async def run(repo: Path, work: Path, timeout_s: float) -> dict[str, Any]:
    """Clone ``repo``, time ``scripts/setup.sh`` and two server starts; returns the figures."""
    tmp = Path(tempfile.mkdtemp(prefix="parley-install-"))
    log = work / "install.log"
    clone = tmp / "parley"
    base_python = getattr(sys, "_base_executable", sys.executable)
    env = {**os.environ, "PYTHON": base_python}
    env.pop("VIRTUAL_ENV", None)
    out: dict[str, Any] = {"python": base_python}
    try:
        git = await asyncio.create_subprocess_exec(
            "git", "-C", str(repo), "rev-parse", "HEAD", stdout=subprocess.PIPE
        )
        out["commit"] = (await git.communicate())[0].decode().strip()
        await _run(["git", "clone", "--quiet", str(repo), str(clone)], tmp, env, log, 300)
        t0 = time.monotonic()
        try:
            rc = await _run(["bash", "scripts/setup.sh"], clone, env, log, timeout_s)
        except TimeoutError:
            out["error"] = f"scripts/setup.sh did not finish within {timeout_s:.0f} s"
            return out
        out["setup_s"] = round(time.monotonic() - t0, 1)
        out["setup_rc"] = rc
        out["venv_mb"] = _du_mb(clone / ".venv")
        if rc != 0:
            out["error"] = f"scripts/setup.sh exited with {rc} (see {log})"
            return out
        ready: list[float] = []
        for _ in range(2):
            server = ServerProcess(
                config=None,
                log_path=work / "install-server.log",
                python=str(clone / ".venv" / "bin" / "python"),
                cwd=clone,
            )
            try:
                ready.append(round(await server.start(timeout_s=300), 2))
                out.setdefault("models_load_s", server.health.get("models"))
            except ServerError as exc:
                out["error"] = f"fresh server did not start: {exc}"
                break
            finally:
                await server.stop()
        out["ready_first_s"] = ready[0] if ready else None
        out["ready_warm_s"] = ready[1] if len(ready) > 1 else None
        return out
    finally:
        await asyncio.to_thread(shutil.rmtree, tmp, True)
