"""The `gateway` command: serve, demo, db upgrade. Errors come out as one line, never a trace."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from aiohttp import web

from config.settings import ConfigError, Settings, load_settings
from gateway import logs
from gateway.channels import ChannelError
from gateway.store import upgrade

if TYPE_CHECKING:
    from gateway.app import ChannelReport

log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gateway",
        description="Telephony and messaging gateway with transcript continuity.",
        epilog="Settings come from GATEWAY_* environment variables (see README.md).",
    )
    parser.add_argument("--config", metavar="FILE", help="a TOML file of settings "
                        "(keys as in GATEWAY_*, lower case, without the prefix)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("serve", help="run the gateway (HTTP, webhooks, SIP, outbox)")
    demo = sub.add_parser("demo", help="tell the escalation story on loopback (WhatsApp, a "
                          "real SIP call) and print what the agent sees")
    demo.add_argument("--keep", action="store_true", help="afterwards keep the gateway "
                      "running on the story's database and print the console URL and an "
                      "agent token (Ctrl-C stops it)")
    db = sub.add_parser("db", help="database commands")
    db_sub = db.add_subparsers(dest="db_command", metavar="DB_COMMAND")
    db_sub.add_parser("upgrade", help="apply the Alembic migrations up to the newest")
    sub.add_parser("agent-token", help="print a new agent API token and its SHA-256 "
                   "(for token_sha256 in GATEWAY_AGENTS)")  # workspace (#11)
    from webhooks import simulate  # workspace (#11): gateway send sms|whatsapp

    simulate.add_parser(sub)
    return parser


def channel_report(reports: Sequence[ChannelReport]) -> str:
    """The start-up report: each channel mounted with the URLs to paste into the provider's
    console, and each one off with what turns it on."""
    lines = ["channels:"]
    for report in reports:
        if report.info is None:
            lines.append(f"  {report.name:<10} off  {report.why_off}")
            continue
        lines.append(f"  {report.name:<10} on")
        lines += [f"      {what}: {url}" for what, url in report.info.urls]
        lines += [f"      ({note})" for note in report.info.notes]
    return "\n".join(lines)


def event_loop(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """`gateway serve`'s loop factory and its name: uvloop (cheaper per SIP message and
    per database round trip: docs/scale-out.md) unless asyncio's is asked for or uvloop is
    not installed. Asking for uvloop without it is a config error naming the key."""
    if choice == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("GATEWAY_EVENT_LOOP=uvloop, but uvloop is not installed "
                              "(pip install uvloop, or GATEWAY_EVENT_LOOP=asyncio)") from None
        return None, "asyncio (uvloop is not installed)"
    return uvloop.new_event_loop, f"uvloop {uvloop.__version__}"


async def serve(settings: Settings, loop_name: str = "asyncio") -> None:
    from gateway import httpedge
    from gateway.app import GATEWAY, build_app, setup_runner

    app = build_app(settings)
    runner = httpedge.runner(app, settings.http_header_timeout_seconds, handle_signals=False)
    await setup_runner(runner)
    site = web.TCPSite(runner, settings.http_host, settings.http_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await site.start()
        # Everything built at start-up (app, SQLAlchemy's compiled caches, modules) lives as
        # long as the process: keep it out of the collector's sight, or a full collection
        # walks it all and one request in a hundred waits tens of milliseconds for it.
        gc.collect()
        gc.freeze()
        # A proxied call or a webhook makes thousands of short-lived objects; collecting the
        # young generation every 700 allocations cost the SIP edge a fifth of its calls per
        # second (bench/sip_cps.py: 400 -> 500 CPS, p99 setup delay 8 -> 4 ms).
        gc.set_threshold(20_000, 50, 100)
        host, port = runner.addresses[0][:2]
        log.info("gateway listening on http://%s:%s (public URL %s), event loop %s", host,
                 port, settings.public_url, loop_name)
        print(f"gateway: listening on http://{host}:{port}, public URL {settings.public_url}"
              f", event loop {loop_name}\n{channel_report(app[GATEWAY].report())}", flush=True)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None or (args.command == "db" and args.db_command is None):
        parser.print_help()
        return 2
    if args.command == "agent-token":  # workspace (#11): needs no settings
        from gateway.auth import print_new_token

        print(print_new_token())
        return 0
    try:
        settings = load_settings(args.config)
        factory, loop_name = event_loop(settings.event_loop)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        if args.command == "serve":
            with asyncio.Runner(loop_factory=factory) as runner:
                runner.run(serve(settings, loop_name))
        elif args.command == "db":
            asyncio.run(upgrade(settings.database_url))
            print(f"database at {settings.database_url.split('@')[-1]} is up to date")
        elif args.command == "send":  # workspace (#11)
            from webhooks import simulate

            return asyncio.run(simulate.run(settings, args))
        elif args.command == "demo":
            from gateway.demo import run_demo

            return asyncio.run(run_demo(keep=args.keep))
    except KeyboardInterrupt:
        return 130
    except (OSError, ChannelError) as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 1
    return 0
