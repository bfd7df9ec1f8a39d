"""The ``csi-driver`` command: the only place that reads command-line arguments.

csi-driver --endpoint unix:///run/csi/csi.sock --mode all --config FILE
csi-driver call --endpoint unix:///run/csi/csi.sock probe
csi-driver demo --data-dir data
csi-driver store copy --from OLD.yaml --to NEW.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from csi_driver import client, log_format, store_copy

#: Subcommands; anything else on the command line is the plugin's own options.
_TOOLS = ("demo", "call", "store")


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csi-driver",
        description="Kubernetes CSI plugin driving Cinder volume drivers directly. "
        "Other commands: 'csi-driver call ...' (a tiny client), 'csi-driver demo', "
        "'csi-driver store copy ...' (move metadata between stores).",
    )
    parser.add_argument("--endpoint", required=True, help="unix:///PATH or tcp://HOST:PORT")
    parser.add_argument("--mode", choices=("controller", "node", "all"), default="all")
    parser.add_argument("--config", required=True, help="the plugin's YAML configuration file")
    parser.add_argument("--log-level", default="INFO", help="Python log level (default INFO)")
    return parser


def _tools_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csi-driver")
    parser.add_argument("--log-level", default="WARNING", help="Python log level")
    commands = parser.add_subparsers(dest="command", required=True)
    run_demo = commands.add_parser("demo", help="run a volume life cycle on the embedded default")
    run_demo.add_argument("--data-dir", default="data", help="where volumes and metadata live")
    client.add_parser(commands)
    store_copy.add_parser(commands)
    return parser


def _logging(level: str) -> None:
    """Log to stderr one line per record (request strings cannot forge lines), warnings
    included."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(log_format.OneLineFormatter(log_format.FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler])
    logging.captureWarnings(True)


def _print_ready(endpoint: object) -> None:
    print(f"CSI plugin listening on {endpoint}", flush=True)
    print(f"try, in another terminal: .venv/bin/csi-driver call --endpoint {endpoint} probe",
          flush=True)  # fmt: skip


def serve(argv: Sequence[str]) -> int:
    from csi_driver import config, server
    from csi_driver.storage import StorageError

    args = _serve_parser().parse_args(argv)
    _logging(args.log_level)
    try:
        plugin_config = config.load(args.config)
        endpoint = server.parse_endpoint(args.endpoint)
        server.serve(plugin_config, endpoint, args.mode, on_ready=_print_ready)
    except (config.ConfigError, server.EndpointError, StorageError) as exc:
        print(f"csi-driver: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (
        argv[0] not in _TOOLS
        and not (argv[0].startswith("--log-level") and len(argv) > 2 and argv[2] in _TOOLS)
    ):
        return serve(argv)
    args = _tools_parser().parse_args(argv)
    _logging(args.log_level)
    if args.command == "store":
        return store_copy.run(args)
    if args.command == "demo":
        from csi_driver.demo import demo

        return demo(args.data_dir)
    return client.run(args)


if __name__ == "__main__":
    sys.exit(main())
