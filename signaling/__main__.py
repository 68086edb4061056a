"""``python -m signaling``: run the server (uvicorn) on the embedded defaults."""

from __future__ import annotations

import argparse
import os
import sys

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.provider_config import CloudCredentials
from signaling.logs import LogConfigError, configure_logging
from signaling.settings import ServerSettings
from signaling.workers import ServeOptions, serve


def main(argv: list[str] | None = None) -> int:
    """Parse flags (overriding ``PARLEY_*`` environment variables) and serve."""
    parser = argparse.ArgumentParser(prog="python -m signaling", description=__doc__)
    parser.add_argument("--host", default=None, help="bind address (PARLEY_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (PARLEY_PORT)")
    parser.add_argument("--config", default=None, help="agent YAML (PARLEY_AGENT_CONFIG)")
    parser.add_argument("--prices", default=None, help="price table YAML (PARLEY_PRICES)")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes sharing the port (PARLEY_WORKERS; default: one per core)",
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "agent_config": args.config,
            "prices": args.prices,
            "workers": args.workers,
        }.items()
        if v is not None
    }
    settings = ServerSettings(**overrides)
    try:  # what can be checked without loading a model fails here, in one line
        chains = AgentConfig.load(settings.agent_config).providers.with_environment(os.environ)
        CloudCredentials.from_env().check(chains)
    except ConfigError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 2
    try:  # one handler, redacted lines, correlation ids; PARLEY_LOG_FORMAT=json|text
        log_config = configure_logging(args.log_level)
    except LogConfigError as exc:
        print(f"parley: {exc}", file=sys.stderr)
        return 2
    print(f"parley: open http://{settings.host}:{settings.port}/ to call the agent", flush=True)
    options = ServeOptions(overrides, log_level=args.log_level, log_config=log_config)
    return serve(settings, options)


if __name__ == "__main__":
    sys.exit(main())
