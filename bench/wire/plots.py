"""PNG plots of a results document (matplotlib, Agg backend, small files).

matplotlib is a benchmark-only dependency: it is imported when plotting
starts (``_mpl``), so the package imports and type-checks without it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.wire.scenarios.common import STAGES

_MPL: SimpleNamespace | None = None


def _mpl() -> SimpleNamespace:
    """``plt`` and ``ticker`` of matplotlib on the Agg backend (imported once)."""
    global _MPL
    if _MPL is None:
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        _MPL = SimpleNamespace(
            plt=importlib.import_module("matplotlib.pyplot"),
            ticker=importlib.import_module("matplotlib.ticker"),
        )
    return _MPL


DPI = 90
COLORS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3")


def _log_axis(axis: Any) -> None:
    """Log scale with plain numbers at 1, 2, 5 x 10^n."""
    ticker = _mpl().ticker
    axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _mpl().plt.close(fig)
    return path


def latency(doc: dict[str, Any], path: Path) -> Path | None:
    """Box plots (with every point) of the latency distributions of every scenario."""
    sc = doc["scenarios"]
    series: list[tuple[str, list[float]]] = []
    v = sc.get("v2v", {})
    if v.get("turns"):
        series.append(("v2v\nscenario", [t["v2v_ms"] for t in v["turns"] if t["v2v_ms"]]))
    for lv in sc.get("concurrency", {}).get("levels", []):
        values = [t["v2v_ms"] for t in lv["turns"] if t["v2v_ms"]]
        if values:
            series.append((f"v2v\n{lv['calls']} sim.", values))
    cloud = sc.get("cloud", {})
    if cloud.get("v2v", {}).get("turns"):
        turns = cloud["v2v"]["turns"]
        series.append(("cloud\n1 call", [t["v2v_ms"] for t in turns if t["v2v_ms"]]))
    for lv in cloud.get("levels", []):
        values = [t["v2v_ms"] for t in lv["turns"] if t["v2v_ms"]]
        if values:
            series.append((f"cloud\n{lv['calls']} sim.", values))
    soak = sc.get("soak", {})
    b = sc.get("bargein", {})
    stops = [t["stop_ms"] for t in b.get("interruptions", []) if t.get("stop_ms") is not None]
    if stops:
        series.append(("barge-in\nstop", stops))
    for key, label in (("coughs", "cough\nsilence"), ("backchannels", "hmm\nsilence")):
        trials = b.get(key, {}).get("trials", [])
        values = [t["longest_silence_ms"] for t in trials if "longest_silence_ms" in t]
        if values:
            series.append((label, values))
    if not series:
        return None
    fig, ax = _mpl().plt.subplots(figsize=(max(6.0, 1.0 * len(series) + 2), 4.2))
    data = [s[1] for s in series]
    ax.boxplot(data, whis=(0, 100), widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for i, values in enumerate(data, start=1):
        xs = i + rng.uniform(-0.15, 0.15, len(values))
        ax.scatter(xs, values, s=9, alpha=0.6, color=COLORS[i % len(COLORS)], zorder=3)
    ax.set_xticks(range(1, len(series) + 1), [s[0] for s in series], fontsize=8)
    ax.set_yscale("log")
    _log_axis(ax.yaxis)
    ax.set_ylabel("ms (log scale)")
    soak_note = f"; soak v2v median {soak['v2v_ms'].get('median')} ms" if soak.get("v2v_ms") else ""
    ax.set_title(f"Latency distributions (caller side){soak_note}", fontsize=10)
    ax.grid(axis="y", which="both", alpha=0.3)
    return _save(fig, path)


def stages(doc: dict[str, Any], path: Path) -> Path | None:
    """Stacked per-turn breakdown of the single-call voice-to-voice time."""
    turns = doc["scenarios"].get("v2v", {}).get("turns", [])
    return _stages(turns, path, "Voice-to-voice per turn, split into stages (1 call)")


def cloud_stages(doc: dict[str, Any], path: Path) -> Path | None:
    """``stages`` of the cloud scenario's single calls."""
    turns = doc["scenarios"].get("cloud", {}).get("v2v", {}).get("turns", [])
    title = "Cloud providers (loopback vendors): voice-to-voice per turn by stage (1 call)"
    return _stages(turns, path, title)


def _stages(all_turns: list[dict[str, Any]], path: Path, title: str) -> Path | None:
    turns = [t for t in all_turns if t.get("stages")]
    if not turns:
        return None
    turns.sort(key=lambda t: t["v2v_ms"])
    fig, ax = _mpl().plt.subplots(figsize=(9.0, 4.2))
    x = np.arange(len(turns))
    bottom = np.zeros(len(turns))
    for (key, label), color in zip(STAGES, COLORS, strict=False):
        values = np.array([max(0.0, float(t["stages"][key])) for t in turns])
        ax.bar(x, values, bottom=bottom, color=color, label=label, width=0.8)
        bottom += values
    ax.plot(x, [t["v2v_ms"] for t in turns], "k_", markersize=10, label="caller-side v2v")
    ax.set_xticks(x, [str(i + 1) for i in range(len(turns))], fontsize=7)
    ax.set_xlabel("turn (sorted by voice-to-voice)")
    ax.set_ylabel("ms")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def concurrency(doc: dict[str, Any], path: Path) -> Path | None:
    """Voice-to-voice, CPU, RSS and underruns against the number of simultaneous calls."""
    return _levels(doc["scenarios"].get("concurrency", {}).get("levels", []), path)


def cloud_concurrency(doc: dict[str, Any], path: Path) -> Path | None:
    """``concurrency`` of the cloud scenario, with its voice-to-voice target."""
    cloud = doc["scenarios"].get("cloud", {})
    target = cloud.get("target", {}).get("v2v_p90_ms")
    return _levels(cloud.get("levels", []), path, target, "cloud: ")


def _levels(
    levels: list[dict[str, Any]], path: Path, target_ms: float | None = None, prefix: str = ""
) -> Path | None:
    levels = [lv for lv in levels if lv.get("v2v_ms") or lv.get("server_cpu_pct") is not None]
    if not levels:
        return None
    calls = [lv["calls"] for lv in levels]
    fig, (a1, a2) = _mpl().plt.subplots(1, 2, figsize=(9.5, 4.0))
    med = [lv["v2v_ms"].get("median", np.nan) for lv in levels]
    p90 = [lv["v2v_ms"].get("p90", np.nan) for lv in levels]
    a1.plot(calls, med, "o-", color=COLORS[0], label="median")
    a1.plot(calls, p90, "s--", color=COLORS[3], label="p90")
    for lv, y in zip(levels, p90, strict=True):
        if not np.isnan(y):
            a1.annotate(
                f"{lv['turns_answered']}/{lv['turns_asked']}",
                (lv["calls"], y),
                textcoords="offset points",
                xytext=(0, 6),
                fontsize=7,
                ha="center",
            )
    if target_ms is not None:
        a1.axhline(target_ms, color="grey", linestyle=":", label=f"p90 target {target_ms:g} ms")
    a1.set_xscale("log", base=2)
    a1.set_yscale("log")
    _log_axis(a1.yaxis)
    a1.set_xticks(calls, [str(c) for c in calls])
    a1.set_xlabel("simultaneous calls")
    a1.set_ylabel("voice-to-voice ms (log)")
    a1.set_title(f"{prefix}voice-to-voice (labels: answered/asked)", fontsize=9)
    a1.grid(which="both", alpha=0.3)
    a1.legend(fontsize=8)
    cpu = [lv.get("server_cpu_pct") or np.nan for lv in levels]
    rss = [lv.get("server_rss_peak_mb") or np.nan for lv in levels]
    a2.plot(calls, cpu, "o-", color=COLORS[2], label="server CPU % (200 = 2 cores)")
    vendors = [lv.get("vendors_cpu_pct") for lv in levels]
    if any(v is not None for v in vendors):
        a2.plot(
            calls,
            [np.nan if v is None else v for v in vendors],
            "d-.",
            color=COLORS[5],
            label="loopback vendors CPU %",
        )
    loop = [lv.get("server_threads_cpu_pct", {}).get("MainThread", np.nan) for lv in levels]
    if not all(np.isnan(v) for v in loop):
        a2.plot(calls, loop, "^:", color=COLORS[1], label="event loop thread CPU %")
    callers = [lv.get("client_cpu_pct") or np.nan for lv in levels]
    a2.plot(calls, callers, "v-.", color=COLORS[6], label="callers' process CPU %")
    a2.set_xscale("log", base=2)
    a2.set_xticks(calls, [str(c) for c in calls])
    a2.set_xlabel("simultaneous calls")
    a2.set_ylabel("CPU % of one core")
    a2.grid(alpha=0.3)
    a3 = a2.twinx()
    a3.plot(calls, rss, "s--", color=COLORS[4], label="server RSS peak MB")
    a3.set_ylabel("RSS MB")
    under = [lv.get("underruns_per_min_speech") for lv in levels]
    for c, u, y in zip(calls, under, cpu, strict=True):
        if u is not None and not np.isnan(y):
            a2.annotate(
                f"{u:.0f}/min", (c, y), textcoords="offset points", xytext=(0, -12), fontsize=7
            )
    lines = a2.get_lines() + a3.get_lines()
    a2.legend(lines, [str(ln.get_label()) for ln in lines], fontsize=7, loc="upper left")
    a2.set_title(f"{prefix}server CPU and RSS (labels: underruns/min of speech)", fontsize=9)
    return _save(fig, path)


def soak(doc: dict[str, Any], path: Path) -> Path | None:
    """Server RSS, descriptors and threads over the soak's calls."""
    points = doc["scenarios"].get("soak", {}).get("points", [])
    if len(points) < 2:
        return None
    x = [p["call"] for p in points]
    fig, a1 = _mpl().plt.subplots(figsize=(7.0, 3.6))
    a1.plot(x, [p["rss_mb"] for p in points], "o-", color=COLORS[0], markersize=3, label="RSS MB")
    a1.set_xlabel("calls made")
    a1.set_ylabel("RSS MB")
    a1.grid(alpha=0.3)
    a2 = a1.twinx()
    a2.plot(x, [p["fds"] for p in points], "s-", color=COLORS[1], markersize=3, label="open fds")
    a2.plot(x, [p["threads"] for p in points], "^-", color=COLORS[2], markersize=3, label="threads")
    a2.set_ylabel("count")
    lines = a1.get_lines() + a2.get_lines()
    a1.legend(lines, [str(ln.get_label()) for ln in lines], fontsize=8, loc="center right")
    a1.set_title("Soak: server resources after each batch of calls", fontsize=10)
    return _save(fig, path)


def write_all(doc: dict[str, Any], out: Path, stem: str) -> dict[str, Path]:
    """Write every plot the document has data for; returns name -> path."""
    makers = {
        "latency": latency,
        "stages": stages,
        "concurrency": concurrency,
        "soak": soak,
        "cloud-stages": cloud_stages,
        "cloud-concurrency": cloud_concurrency,
    }
    paths: dict[str, Path] = {}
    for name, make in makers.items():
        path = make(doc, out / f"{stem}-{name}.png")
        if path is not None:
            paths[name] = path
    return paths
