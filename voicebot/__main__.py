"""``python -m voicebot``: the command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import uvloop

from voicebot.logs import configure_logging
from voicebot.serve import run_workers, serve
from voicebot.settings import SettingsError, load_settings
from voicebot.tools import load_tool_specs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m voicebot",
        description="Serve the voicebot Twilio Media Streams bot. Settings come from config/voicebot.toml, "
        "then .env, then environment variables; the flags below override them.",
        epilog="Other commands: `python -m voicebot twilio numbers|connect|call` (see `twilio --help`) and "
        "`python -m voicebot doctor` (what stands between this configuration and a working call).",
    )
    parser.add_argument("--host", help="address to listen on (VOICEBOT_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (VOICEBOT_PORT, default 8080)")
    parser.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help="run N identical worker processes sharing the port with SO_REUSEPORT (default 1)",
    )  # fmt: skip
    parser.add_argument("--config", type=Path, help="alternative TOML settings file (VOICEBOT_CONFIG)")
    parser.add_argument("--public-url", help="public base URL Twilio reaches (VOICEBOT_PUBLIC_URL)")
    parser.add_argument("--log-format", choices=["auto", "console", "json"], help="VOICEBOT_LOG_FORMAT")
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="VOICEBOT_LOG_LEVEL")
    parser.add_argument(
        "--check-config", action="store_true",
        help="print the effective settings (secrets shown only as <set>/<unset>) and exit",
    )  # fmt: skip
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "host": args.host,
        "port": args.port,
        "public_url": args.public_url,
        "log_format": args.log_format,
        "log_level": args.log_level,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["twilio"]:
        from voicebot.twilio.cli import run as run_twilio

        return asyncio.run(run_twilio(argv[1:]))
    if argv[:1] == ["doctor"]:
        from voicebot.doctor import run as run_doctor

        return asyncio.run(run_doctor(argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(config_path=args.config, overrides=_overrides(args))
        specs = load_tool_specs(settings)  # a bad tools file or module stops here, naming the tool and the key
        if args.check_config:
            shown = {**settings.redacted(), "tools (loaded)": specs.names}
            sys.stdout.write(orjson.dumps(shown, option=orjson.OPT_INDENT_2).decode() + "\n")
            return 0
        settings.check_startup()
    except SettingsError as exc:
        sys.stderr.write(f"voicebot: {exc}\n")
        return 2
    if args.workers < 1:
        sys.stderr.write("voicebot: --workers must be at least 1\n")
        return 2
    if args.workers > 1:
        configure_logging(settings.log_level, settings.log_format, settings.secret_values())
        return run_workers(settings, args.workers)
    configure_logging(settings.log_level, settings.log_format, settings.secret_values())
    uvloop.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
