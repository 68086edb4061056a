"""``python -m store``: the store's operator commands.

- ``migrate``: apply the schema migrations (production's explicit step);
- ``keys create --name NAME --scopes calls[,admin] [--max-calls N]``: create an
  API key and print it (on stdout, once: only its hash is stored);
- ``keys list``: every key (id, name, scopes, quota, last use, revocation);
- ``keys revoke ID``: revoke a key (every worker refuses it within seconds);
- ``tokens reencrypt``: rewrite the stored platform tokens with the first key of
  ``PARLEY_TOKEN_KEY`` (after listing a new key first; the old ones may then go);
- ``tokens generate-key``: print a new key for ``PARLEY_TOKEN_KEY``.

The store is the one ``DATABASE_URL`` / ``PARLEY_DATA_DIR`` name, as for the server.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import AsyncEngine

from store.apikeys import SCOPES, ApiKeyError, ApiKeyRepository, KeyInfo
from store.crypto import TokenCipher, TokenCryptoError, generate_key
from store.db import ensure_schema, make_engine, migrate, sessionmaker
from store.platform_accounts import PlatformAccountRepository
from store.settings import StoreSettings


@asynccontextmanager
async def _engine(settings: StoreSettings) -> AsyncIterator[AsyncEngine]:
    if settings.embedded:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    args: dict[str, object] = {}
    if settings.db_schema and not settings.embedded:
        await ensure_schema(settings.sqlalchemy_url(), settings.db_schema)
        args["server_settings"] = {"search_path": settings.db_schema}
    engine = make_engine(settings.sqlalchemy_url(), connect_args=args)
    try:
        yield engine
    finally:
        await engine.dispose()


async def _migrate() -> None:
    async with _engine(StoreSettings()) as engine:
        await migrate(engine)


def _describe(info: KeyInfo) -> str:
    def when(value: dt.datetime | None) -> str:
        return value.isoformat(timespec="seconds") if value is not None else "-"

    quota = str(info.max_calls) if info.max_calls is not None else "-"
    state = f"revoked {when(info.revoked_at)}" if info.revoked else "active"
    return (
        f"{info.id}  {','.join(info.scopes):<11}  max_calls={quota:<4}  "
        f"created {when(info.created_at)}  last used {when(info.last_used_at)}  "
        f"{state}  {info.name}"
    )


async def _keys(args: argparse.Namespace) -> int:
    settings = StoreSettings()
    async with _engine(settings) as engine:
        if settings.should_migrate():
            await migrate(engine)
        keys = ApiKeyRepository(sessionmaker(engine))
        if args.keys_command == "create":
            try:
                issued = await keys.create(
                    args.name, args.scopes.split(","), max_calls=args.max_calls
                )
            except ApiKeyError as exc:
                print(f"store: {exc}", file=sys.stderr)
                return 2
            print(f"store: created {_describe(issued.info)}", file=sys.stderr)
            print("store: the key is shown this once; keep it secret", file=sys.stderr)
            print(issued.key)
            return 0
        if args.keys_command == "list":
            for info in await keys.list_keys():
                print(_describe(info))
            return 0
        revoked = await keys.revoke(args.key_id)
        if revoked is None:
            print(f"store: no key {args.key_id!r}", file=sys.stderr)
            return 1
        print(f"store: revoked {_describe(revoked)}", file=sys.stderr)
        return 0


async def _reencrypt() -> int:
    settings = StoreSettings()
    try:
        cipher = TokenCipher.from_config(
            settings.token_key.get_secret_value() if settings.token_key else None,
            settings.data_dir,
        )
    except TokenCryptoError as exc:
        print(f"store: {exc}", file=sys.stderr)
        return 2
    async with _engine(settings) as engine:
        if settings.should_migrate():
            await migrate(engine)
        accounts = PlatformAccountRepository(sessionmaker(engine), cipher)
        try:
            count = await accounts.reencrypt()
        except TokenCryptoError as exc:
            print(f"store: {exc}", file=sys.stderr)
            return 1
    print(
        f"store: {count} platform accounts re-encrypted with key {cipher.key_ids[0]}",
        file=sys.stderr,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply the schema migrations")
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    create = key_commands.add_parser("create", help="create a key and print it once")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument(
        "--scopes", default="calls", help=f"comma-separated, of: {', '.join(SCOPES)}"
    )
    create.add_argument(
        "--max-calls", type=int, default=None, help="concurrent calls of the key's rooms"
    )
    key_commands.add_parser("list", help="list every key (never a secret)")
    revoke = key_commands.add_parser("revoke", help="revoke a key")
    revoke.add_argument("key_id", help="the key's id (the part after pk_)")
    tokens = commands.add_parser("tokens", help="platform tokens encrypted at rest")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True)
    token_commands.add_parser(
        "reencrypt", help="rewrite stored tokens with the first key of PARLEY_TOKEN_KEY"
    )
    token_commands.add_parser("generate-key", help="print a new key for PARLEY_TOKEN_KEY")
    args = parser.parse_args(argv)
    if args.command == "keys":
        return asyncio.run(_keys(args))
    if args.command == "tokens":
        if args.tokens_command == "generate-key":
            print(generate_key())
            return 0
        return asyncio.run(_reencrypt())
    asyncio.run(_migrate())
    print("store: schema is up to date", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
