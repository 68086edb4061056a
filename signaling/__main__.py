"""``python -m signaling``: run the server (uvicorn) on the embedded defaults."""

from __future__ import annotations

import argparse
import logging
import os
import sys

import uvicorn

from agent.config import AgentConfig
from agent.errors import ConfigError
from agent.provider_config import CloudCredentials
from signaling.app import create_app
from signaling.settings import ServerSettings


def main(argv: list[str] | None = None) -> int:
    """Parse flags (overriding ``PARLEY_*`` environment variables) and serve."""
    parser = argparse.ArgumentParser(prog="python -m signaling", description=__doc__)
    parser.add_argument("--host", default=None, help="bind address (PARLEY_HOST)")
    parser.add_argument("--port", type=int, default=None, help="port (PARLEY_PORT)")
    parser.add_argument("--config", default=None, help="agent YAML (PARLEY_AGENT_CONFIG)")
    parser.add_argument("--prices", default=None, help="price table YAML (PARLEY_PRICES)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    overrides = {
        k: v
        for k, v in {
            "host": args.host,
            "port": args.port,
            "agent_config": args.config,
            "prices": args.prices,
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
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app = create_app(settings)
    print(f"parley: open http://{settings.host}:{settings.port}/ to call the agent", flush=True)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=args.log_level,
        ws_max_size=1024 * 1024,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
