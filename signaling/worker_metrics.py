"""One ``/metrics`` for all the workers of a machine.

Each worker has its own Prometheus registry, and a scrape lands on one
worker. So that a single scrape sees every worker, each worker publishes its
exposition to ``<data dir>/metrics/worker-<index>.prom`` every
``PUBLISH_S`` seconds (and whenever it is scraped), and ``/metrics`` merges the
files of the workers that published recently, each sample labelled with
``worker="<index>"`` (sum over ``worker`` in queries). Another worker's figures
are at most ``PUBLISH_S`` old. Workers on other machines are scraped there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

PUBLISH_S = 5.0
"""How often a worker publishes its metrics for the others' scrapes."""
STALE_S = 30.0
"""A worker whose file is older than this has stopped: its figures are left out."""


class WorkerMetrics:
    """Publishes this worker's exposition and merges every worker's."""

    def __init__(self, directory: Path, index: int, render: Callable[[], bytes]) -> None:
        self.directory = directory
        self.index = index
        self._render = render
        directory.mkdir(parents=True, exist_ok=True)
        self._path = directory / f"worker-{index}.prom"

    def publish(self) -> bytes:
        """Write this worker's exposition atomically; returns it."""
        text = self._render()
        tmp = self._path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(text)
        os.replace(tmp, self._path)
        return text

    async def run(self) -> None:
        """Publish every ``PUBLISH_S`` until cancelled (a task owned by the app's lifespan)."""
        while True:
            try:
                await asyncio.to_thread(self.publish)
            except OSError as exc:
                log.warning("worker metrics not published (%s)", type(exc).__name__)
            await asyncio.sleep(PUBLISH_S)

    def merged(self) -> bytes:
        """Every live worker's metrics in one exposition, labelled by worker."""
        own = self.publish()
        texts: dict[str, str] = {str(self.index): own.decode("utf-8")}
        now = time.time()
        for path in sorted(self.directory.glob("worker-*.prom")):
            index = path.stem.removeprefix("worker-")
            if index == str(self.index) or not index.isdigit():
                continue
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime < STALE_S:
                    texts[index] = path.read_text("utf-8")
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(texts))
        return generate_latest(registry)


class _Merged(Collector):
    """The families of several workers' expositions, samples labelled with their worker."""

    def __init__(self, texts: dict[str, str]) -> None:
        self._texts = texts

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for worker, text in self._texts.items():
            try:
                parsed = list(text_string_to_metric_families(text))
            except ValueError:
                log.warning("worker %s published unreadable metrics", worker)
                continue
            for family in parsed:
                merged = families.get(family.name)
                if merged is None:
                    merged = Metric(family.name, family.documentation, family.type, family.unit)
                    families[family.name] = merged
                for sample in family.samples:
                    merged.samples.append(
                        sample._replace(labels={**sample.labels, "worker": worker})
                    )
        yield from families.values()
