"""`analytics-sandbox`: serve a local replica of the analytics API."""

from __future__ import annotations

import argparse
import sys
import time

from analytics_dagster.sandbox.app import DEFAULT_API_KEY, DEFAULT_PATH_PREFIX, SandboxConfig
from analytics_dagster.sandbox.factories import LOCALIZED_SHARE
from analytics_dagster.sandbox.server import SandboxServer
from analytics_dagster.sandbox.world import World


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="analytics-sandbox",
        description="Serve a local, deterministic replica of the analytics API on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one (default: %(default)s)")
    parser.add_argument("--customers", type=int, default=100, help="scale of the world (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="makes data and faults reproducible (default: %(default)s)")
    parser.add_argument("--localized", type=float, default=LOCALIZED_SHARE,
                        help="share of subscriptions billed in their customer's currency (default: %(default)s)")
    parser.add_argument("--lifecycles", action="store_true",
                        help="subscriptions renew, pause, resume, cancel and change quantity over a year more of history")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="the Bearer token accepted (default: %(default)s)")
    parser.add_argument("--fault-rate", type=float, default=0.0, help="share of requests failing with 429/500/502/503/504")
    parser.add_argument("--fault-retry-after", type=int, default=1, help="Retry-After seconds of a fault 429")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every request")
    parser.add_argument("--rate-limit", type=int, default=0, help="requests per minute per client; 0: none")
    parser.add_argument("--rate-limit-block", type=float, default=60.0, help="seconds a client is blocked past the limit")
    parser.add_argument("--path-prefix", default=DEFAULT_PATH_PREFIX,
                        help="the API's paths go under it; '' serves them at the root, as Paddle's own API does (default: %(default)s)")
    parser.add_argument("--rate-limit-window", type=float, default=60.0, help="seconds the limit is counted over (default: a minute)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    world = World(customers=args.customers, seed=args.seed, localized=args.localized, lifecycles=args.lifecycles)
    config = SandboxConfig(
        api_key=args.api_key,
        fault_rate=args.fault_rate,
        fault_retry_after=args.fault_retry_after,
        latency=args.latency,
        rate_limit=args.rate_limit,
        rate_limit_block=args.rate_limit_block,
        rate_limit_window=args.rate_limit_window,
    )
    server = SandboxServer(world, host=args.host, port=args.port, config=config, path_prefix=args.path_prefix)
    counts = ", ".join(f"{name}={n}" for name, n in world.counts().items())
    paths = f"paths under {args.path_prefix}" if args.path_prefix else "paths at the root"
    print(f"analytics sandbox serving {server.url} ({paths}; built in {time.monotonic() - started:.1f}s: {counts})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    sys.exit(0)


if __name__ == "__main__":
    main()
