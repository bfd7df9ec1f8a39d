"""The ``csi-driver`` command: the only place that reads command-line arguments.

csi-driver --endpoint unix:///run/csi/csi.sock --mode all --config FILE [--config FILE...]
csi-driver --endpoint unix:///csi/csi.sock --mode node --config FILE \
    --registration-dir /registration --kubelet-endpoint /var/lib/kubelet/plugins/NAME/csi.sock \
    --health-port 9808
csi-driver --version
csi-driver call --endpoint unix:///run/csi/csi.sock probe
csi-driver demo --data-dir data
csi-driver store copy --from OLD.yaml --to NEW.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import csi_driver
from csi_driver import log_format

if TYPE_CHECKING:
    from csi_driver.config import PluginConfig
    from csi_driver.server import Companion, Endpoint

#: Subcommands; anything else on the command line is the plugin's own options.
_TOOLS = ("demo", "call", "store")


def _serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csi-driver",
        description="Kubernetes CSI plugin driving Cinder volume drivers directly. "
        "Other commands: 'csi-driver call ...' (a tiny client), 'csi-driver demo', "
        "'csi-driver store copy ...' (move metadata between stores).",
    )
    parser.add_argument("--version", action=_PrintVersion)
    parser.add_argument("--endpoint", required=True, help="unix:///PATH or tcp://HOST:PORT")
    parser.add_argument("--mode", choices=("controller", "node", "all"), default="all")
    parser.add_argument("--config", required=True, action="append", metavar="FILE",
                        help="the plugin's YAML configuration file; repeat it to merge several "
                        "in order (e.g. a ConfigMap's, then a Secret's)")  # fmt: skip
    parser.add_argument("--log-level", default="INFO", help="Python log level (default INFO)")
    kubelet = parser.add_argument_group(
        "kubelet", "what the node-driver-registrar and livenessprobe sidecars would do"
    )
    kubelet.add_argument("--registration-dir", metavar="DIR",
                         help="node/all mode: register with kubelet through a socket in DIR "
                         "(kubelet's <root>/plugins_registry)")  # fmt: skip
    kubelet.add_argument("--kubelet-endpoint", metavar="PATH",
                         help="the CSI socket's path as kubelet sees it (default: the path "
                         "of --endpoint)")  # fmt: skip
    kubelet.add_argument(
        "--health-port",
        type=_port,
        metavar="PORT",
        help="serve HTTP GET /healthz and /readyz (Identity.Probe through --endpoint; "
        "/readyz also waits until kubelet confirmed the registration)",
    )
    kubelet.add_argument("--health-address", metavar="ADDRESS",
                         help="address /healthz and /readyz listen on (default 0.0.0.0: kubelet's "
                         "httpGet probe reaches the pod IP)")  # fmt: skip
    kubelet.add_argument(
        "--health-probe-timeout",
        type=float,
        metavar="SECONDS",
        help="seconds the Probe behind /healthz and /readyz may take (default 2)",
    )
    return parser


def _version() -> str:
    """The plugin's version, the CSI spec it serves, and the Cinder and os-brick releases
    installed beside it (the ones an operator pins and upgrades on their own schedule)."""
    from importlib import metadata

    from csi_driver.csi_pb import SPEC_VERSION

    releases = ", ".join(f"{name} {metadata.version(name)}" for name in ("cinder", "os-brick"))
    return f"csi-driver {csi_driver.__version__} (CSI spec {SPEC_VERSION}; {releases})"


class _PrintVersion(argparse.Action):
    """``--version``, worked out only when asked: reading the installed packages'
    metadata costs tens of milliseconds that every start would otherwise pay."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 **kwargs: object) -> None:  # fmt: skip
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="print the version and the Cinder and os-brick releases")  # fmt: skip

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        sys.stdout.write(_version() + "\n")
        parser.exit()


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0: any free)")
    return int(text)


def _check_usage(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse combinations that cannot work, before anything starts."""
    if args.registration_dir and args.mode == "controller":
        parser.error("--registration-dir: kubelet registers node plugins; use it with "
                     "--mode node or all")  # fmt: skip
    if args.kubelet_endpoint and not args.registration_dir:
        parser.error("--kubelet-endpoint only means something with --registration-dir")
    if args.health_port is None and (
        args.health_address is not None or args.health_probe_timeout is not None
    ):
        parser.error("--health-address and --health-probe-timeout need --health-port")
    if args.health_probe_timeout is not None and not 0 < args.health_probe_timeout <= 60:
        parser.error("--health-probe-timeout: a number of seconds above 0, at most 60")


def _companions(
    args: argparse.Namespace, endpoint: Endpoint, plugin_config: PluginConfig
) -> list[Companion]:
    """The servers run beside the CSI one: /healthz, then kubelet registration (so
    registration stops first)."""
    from csi_driver.kubelet import health, registration
    from csi_driver.server import EndpointError, parse_endpoint

    companions: list[Companion] = []
    status = registration.RegistrationStatus()
    if args.health_port is not None:
        companions.append(health.HealthServer(
            args.health_address or health.DEFAULT_ADDRESS, args.health_port,
            endpoint.grpc_address,
            probe_timeout=args.health_probe_timeout or health.PROBE_TIMEOUT,
            checks=[status.problem] if args.registration_dir else [],
            readiness_checks=[status.pending] if args.registration_dir else [],
        ))  # fmt: skip
    if args.registration_dir:
        seen = args.kubelet_endpoint or str(endpoint)  # a path, or unix:///path
        kubelet_endpoint = parse_endpoint(
            seen if seen.startswith(("unix:", "tcp:")) else f"unix://{seen}"
        )
        if kubelet_endpoint.scheme != "unix":
            raise EndpointError(f"--registration-dir: kubelet reaches CSI plugins on a "
                                f"unix socket, not {kubelet_endpoint}; give "
                                "--kubelet-endpoint")  # fmt: skip
        companions.append(registration.RegistrationServer(
            args.registration_dir, plugin_config.driver_name, kubelet_endpoint.address, status
        ))  # fmt: skip
    return companions


def _tools_parser() -> argparse.ArgumentParser:
    from csi_driver import client, store_copy  # the plugin itself needs neither

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

    parser = _serve_parser()
    args = parser.parse_args(argv)
    _check_usage(parser, args)
    _logging(args.log_level)
    try:
        plugin_config = config.load(*args.config)
        endpoint = server.parse_endpoint(args.endpoint)
        companions = _companions(args, endpoint, plugin_config)
        server.serve(plugin_config, endpoint, args.mode, on_ready=_print_ready,
                     companions=companions)  # fmt: skip
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
    from csi_driver import client, store_copy

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
