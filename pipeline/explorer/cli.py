"""``mathsynth explore RUN_OR_RECIPE... [--host] [--port]``: serve the explorer page until Ctrl-C."""
from __future__ import annotations

import argparse
import logging

from data.errors import ConfigError

log = logging.getLogger(__name__)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="RUN_OR_RECIPE",
                        help="stage output folders, run folders holding them, recipe files, or JSONL corpus files")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: this machine only; anything else lets the network "
                             "read every record in these folders)")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")


def run(args: argparse.Namespace) -> int:
    from pipeline.explorer.server import make_server, url_of
    from pipeline.explorer.session import Explorer

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port: {args.port} is not a port (0-65535)")
    explorer = Explorer(args.paths)
    for dataset in explorer.datasets:
        problem = dataset.error or explorer.errors.get(dataset.name)
        print(f"  {dataset.name}: " + (problem or f"{dataset.kind}, {explorer.indexes[dataset.name].count()} records"))
    try:
        server = make_server(explorer, args.host, args.port)
    except OSError as err:
        raise ConfigError(f"--port: cannot listen on {args.host}:{args.port} ({err.strerror or err})") from None
    if args.host not in LOOPBACK:
        log.warning("listening on %s: anyone who can reach this machine can read these records", args.host)
    print(f"explorer: {url_of(server)}  (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        explorer.close()
    return 0
