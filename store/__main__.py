"""``python -m store migrate``: apply the schema migrations (production's explicit step)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from store.db import ensure_schema, make_engine, migrate
from store.settings import StoreSettings


async def _migrate() -> None:
    settings = StoreSettings()
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    args: dict[str, object] = {}
    if settings.db_schema and not settings.embedded:
        await ensure_schema(settings.sqlalchemy_url(), settings.db_schema)
        args["server_settings"] = {"search_path": settings.db_schema}
    engine = make_engine(settings.sqlalchemy_url(), connect_args=args)
    try:
        await migrate(engine)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(prog="python -m store", description=__doc__)
    parser.add_argument("command", choices=["migrate"])
    parser.parse_args(argv)
    asyncio.run(_migrate())
    print("store: schema is up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
