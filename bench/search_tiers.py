"""Music search through the tiers: time of each tier and the share of requests each serves.

A workload of repeated and near-duplicate spoken queries (by default 200
requests over 40 distinct songs, each said three ways: "play <title> by
<artist>", "<TITLE> - <Artist> song", "can you play <title>") is resolved by
``signaling.music_search.TieredMusicResolver`` against the loopback Spotify
API with a realistic added latency per request (120 ms by default). The user
has a synced library of a quarter of the songs. Caches start empty.

Printed per store backend (PostgreSQL + Redis when 127.0.0.1:5432/6379 answer,
and the embedded SQLite + in-process LRU): for each tier, the share of
requests it served and the median / p90 of those requests' total time, and
the median / p90 time of each tier's own lookup over every request that asked
it; then the same workload again after the hot tier was lost (a restart of an
embedded server, a Redis flush), when the SQL tier answers first.
``--json`` writes the figures.

Run: ``.venv/bin/python -m bench.search_tiers [--requests 200] [--latency-ms 120]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import secrets
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from agent.platforms.search import SearchTier, TrackSearch
from agent.platforms.spotify import SpotifyPlatform
from signaling.music_search import TieredMusicResolver, namespace
from store.library import LibraryTrackRecord, music_key
from store.settings import StoreSettings
from store.store import Store
from store.tiered import TieredCache
from tests.backends import PG_DB, PG_HOST, PG_PORT, REDIS_HOST, REDIS_PORT, drop_schema, reachable
from tests.music import MemoryTokens
from tests.vendors.music_catalogue import CATALOGUE, Song
from tests.vendors.spotify_api import SpotifyAPI

USER = "usr_bench"


def spellings(song: Song) -> list[str]:
    """Three ways a caller asks for ``song``."""
    artist = song.artists[0]
    return [
        f"play {song.title} by {artist}",
        f"{song.title.upper()} - {artist} song",
        f"can you play {song.title.lower()}",
    ]


def workload(n: int, songs: int, seed: int = 7) -> list[str]:
    """``n`` requests over ``songs`` distinct songs, three spellings each, in random order."""
    rng = random.Random(seed)
    pool = CATALOGUE[:songs]
    return [rng.choice(spellings(rng.choice(pool))) for _ in range(n)]


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


async def run_backend(
    name: str, settings: StoreSettings, queries: list[str], latency_s: float, songs: int
) -> dict[str, Any]:
    """Resolve ``queries`` on one store backend; the figures."""
    store = await Store.open(settings)
    results: list[TrackSearch] = []
    cold_hot: list[TrackSearch] = []
    try:
        await store.users.ensure(USER)
        liked = CATALOGUE[:songs:4]  # a quarter of the songs are in the user's library
        await store.library.replace(
            USER,
            "spotify",
            [
                LibraryTrackRecord(
                    s.spotify_id, f"spotify:track:{s.spotify_id}", s.title, s.artists, s.album
                )
                for s in liked
            ],
            [],
        )
        async with SpotifyAPI(tokens={"bench-token"}, latency_s=latency_s) as api:
            spotify = SpotifyPlatform(MemoryTokens("bench-token"), base_url=api.base_url)
            resolver = TieredMusicResolver({"spotify": spotify}, store.cache, store.library)
            try:
                for query in queries:
                    results.append(await resolver.tracks(USER, "spotify", query))
                warm_platform_requests = len(api.recorded("GET", "/search"))
                # The hot tier lost (a restart of an embedded server, a Redis flush): the
                # same workload again finds its answers in the SQL tier first.
                for query in set(queries):
                    await store.hot.delete(TieredCache.key(namespace("spotify"), music_key(query)))
                for query in queries:
                    cold_hot.append(await resolver.tracks(USER, "spotify", query))
            finally:
                await spotify.aclose()
            platform_requests = len(api.recorded("GET", "/search"))
    finally:
        await store.close()
        await drop_schema(settings)
    return {
        "backend": name,
        "first_run": figures_of(results, warm_platform_requests),
        "after_hot_tier_loss": figures_of(cold_hot, platform_requests - warm_platform_requests),
    }


def figures_of(results: list[TrackSearch], platform_requests: int) -> dict[str, Any]:
    """Shares and times of one pass over the workload."""
    served: dict[str, list[float]] = defaultdict(list)
    lookups: dict[str, list[float]] = defaultdict(list)
    for r in results:
        served[r.tier.value].append(r.timings_ms["total"])
        for tier, ms in r.timings_ms.items():
            if tier != "total":
                lookups[tier].append(ms)
    n = len(results)
    return {
        "requests": n,
        "platform_requests": platform_requests,
        "served": {
            tier.value: {
                "share": len(served[tier.value]) / n,
                "count": len(served[tier.value]),
                "median_ms": statistics.median(served[tier.value]) if served[tier.value] else None,
                "p90_ms": pct(served[tier.value], 0.9) if served[tier.value] else None,
            }
            for tier in SearchTier
        },
        "lookup": {
            tier.value: {
                "asked": len(lookups[tier.value]),
                "median_ms": statistics.median(lookups[tier.value])
                if lookups[tier.value]
                else None,
                "p90_ms": pct(lookups[tier.value], 0.9) if lookups[tier.value] else None,
            }
            for tier in SearchTier
        },
        "all_median_ms": statistics.median(r.timings_ms["total"] for r in results),
    }


def show(title: str, figures: dict[str, Any]) -> None:
    """Print one pass's table."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:8.2f}"

    print(
        f"\n== {title}: {figures['requests']} requests, "
        f"{figures['platform_requests']} platform searches, "
        f"median {figures['all_median_ms']:.2f} ms per request"
    )
    print(
        f"{'tier':<9} {'served':>7} {'share':>6}  {'req median':>10} {'req p90':>8}  "
        f"{'lookup asked':>12} {'median':>8} {'p90':>8}"
    )
    for tier in SearchTier:
        s, lk = figures["served"][tier.value], figures["lookup"][tier.value]
        print(
            f"{tier.value:<9} {s['count']:>7} {s['share']:>6.1%}  {ms(s['median_ms']):>10} "
            f"{ms(s['p90_ms']):>8}  {lk['asked']:>12} {ms(lk['median_ms'])} {ms(lk['p90_ms'])}"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--songs", type=int, default=40)
    parser.add_argument("--latency-ms", type=float, default=120.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    queries = workload(args.requests, min(args.songs, len(CATALOGUE)))
    distinct_keys = len(set(queries))
    print(
        f"{args.requests} requests, {args.songs} songs x 3 spellings "
        f"({distinct_keys} distinct strings), platform latency {args.latency_ms:.0f} ms"
    )
    out: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        backends: list[tuple[str, StoreSettings]] = []
        if reachable(PG_HOST, PG_PORT) and reachable(REDIS_HOST, REDIS_PORT):
            run = secrets.token_hex(4)
            backends.append(
                (
                    "postgres+redis",
                    StoreSettings(
                        DATABASE_URL=f"postgresql://postgres@{PG_HOST}:{PG_PORT}/{PG_DB}",
                        REDIS_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
                        PARLEY_DB_SCHEMA=f"bench_{run}",
                        PARLEY_REDIS_PREFIX=f"parley-bench-{run}:",
                        PARLEY_AUTO_MIGRATE=True,
                        PARLEY_DATA_DIR=Path(tmp) / "server",
                    ),
                )
            )
        else:
            print("PostgreSQL/Redis not reachable on 127.0.0.1: embedded backend only")
        backends.append(
            (
                "sqlite+memory",
                StoreSettings(
                    PARLEY_DATA_DIR=Path(tmp) / "embedded", DATABASE_URL=None, REDIS_URL=None
                ),
            )
        )
        for name, settings in backends:
            figures = await run_backend(
                name, settings, queries, args.latency_ms / 1000.0, args.songs
            )
            show(f"{name}, first run (caches empty)", figures["first_run"])
            show(f"{name}, after the hot tier was lost", figures["after_hot_tier_loss"])
            out.append(figures)
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
