"""The commands that need the local Hub, the optional extra `publisher[hub]`: `publisher hub
serve` and `publisher demo`.

Part of the CLI layer: `publisher.cli` adds them to its parser (`add_commands`). Without the extra
they end in one plain error that says what to install.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from types import ModuleType

from publisher.console import EXIT_OK
from publisher.errors import CommandError

HUB_EXTRA_MODULES = ("fastapi", "starlette", "uvicorn", "markdown_it")
"""What the `hub` extra installs: the local Hub (`publisher hub serve`, the demo) imports them."""


def _import_hubserver(what: str) -> ModuleType:
    """`publisher.hubserver`, or a CommandError that names the extra to install."""
    try:
        import publisher.hubserver as hubserver
    except ModuleNotFoundError as exc:
        if exc.name not in HUB_EXTRA_MODULES:
            raise
        raise CommandError(
            f"{what} needs the local Hub, which is the optional extra `publisher[hub]` "
            f"({exc.name} is not installed): pip install 'publisher[hub]' "
            "(in a checkout: pip install -e '.[hub]')"
        ) from None
    return hubserver


def cmd_hub_serve(args: argparse.Namespace) -> int:
    hubserver = _import_hubserver("'publisher hub serve'")
    from publisher.hubserver.server import TOKEN_ENV

    # The accepted token comes from the environment, never from the command line (shell history).
    hubserver.serve(
        args.host,
        args.port,
        Path(args.data),
        token=os.environ.get(TOKEN_ENV) or None,
        user=args.user or hubserver.DEFAULT_USER,
        test_api=args.test_api,
    )
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from publisher import demo

    _import_hubserver("'publisher demo'")
    return demo.run_demo(Path(args.out), on=args.on)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"'{text}' is not a port number (1 to 65535)")
    return int(text)


def add_commands(sub: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:
    """Add `hub serve` and `demo` to the CLI's parser; returns the nested parsers (`hub serve`),
    which the CLI gives its common flags too."""
    from publisher.jobs import RUNS_ON

    p = sub.add_parser("hub", help="the local Hub-compatible server")
    hub_sub = p.add_subparsers(dest="hub_command", required=True, metavar="HUB_COMMAND")
    hp = hub_sub.add_parser("serve", help="serve the Hub API for huggingface_hub over HTTP")
    hp.add_argument("--host", default="127.0.0.1")
    hp.add_argument("--port", type=_port, default=8808)
    hp.add_argument("--data", default="build/hub-data", help="where repos are stored")
    hp.add_argument("--user", help="the user name whoami answers (default: publisher-demo)")
    hp.add_argument(
        "--test-api",
        action="store_true",
        help="serve /_publisher/faults and /_publisher/stats (fault injection)",
    )
    hp.set_defaults(func=cmd_hub_serve)

    p = sub.add_parser("demo", help="the main job on the embedded demo recipe")
    p.add_argument("--out", default="build/demo")
    p.add_argument(
        "--on",
        choices=RUNS_ON,
        default="local",
        help="hf-jobs: the GPU stages as Jobs of the local Hub (subprocesses), then pushed",
    )
    p.set_defaults(func=cmd_demo)
    return [hp]
