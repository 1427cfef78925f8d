"""`-v`, `--log-level` and `--log-format`, accepted before the subcommand and after it
(`spear serve -v --log-format json`).

Both formats show a record's structured fields (the `extra` a log call passes: `function`,
`instance_id`, `request_id`, `event`, `status`...): text appends them as `key=value`, JSON
puts them beside `ts`, `level`, `logger` and `message`, one object per line.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "color_message", "taskName"}


def _level(text: str) -> str:
    level = text.upper()
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(LEVELS)} (got {text!r})")
    return level


def add_logging_options(parser: argparse.ArgumentParser, *, subcommand: bool) -> None:
    """Add the options; a subcommand's copies leave the top-level values alone when absent."""
    group = parser.add_argument_group("logging")
    group.add_argument("-v", "--verbose", action="count",
                       dest="sub_verbose" if subcommand else "verbose",
                       default=argparse.SUPPRESS if subcommand else 0,
                       help="more logging (-v: INFO, -vv: DEBUG)")
    group.add_argument("--log-level", type=_level, metavar="LEVEL",
                       default=argparse.SUPPRESS if subcommand else None,
                       help=f"log level: {', '.join(LEVELS)} (overrides -v)")
    group.add_argument("--log-format", choices=FORMATS,
                       default=argparse.SUPPRESS if subcommand else "text",
                       help="text (default) or json: one JSON object per line")


def log_level(args: argparse.Namespace) -> int:
    named: str | None = getattr(args, "log_level", None)
    if named is not None:
        return int(getattr(logging, named))
    verbose = int(getattr(args, "verbose", 0)) + int(getattr(args, "sub_verbose", 0))
    return logging.WARNING - 10 * min(verbose, 2)


def configure_logging(args: argparse.Namespace) -> None:
    """One handler on stderr, in the chosen format, at the chosen level."""
    handler = logging.StreamHandler(sys.stderr)
    if getattr(args, "log_format", "text") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    logging.basicConfig(level=log_level(args), handlers=[handler], force=True)


def extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {key: value for key, value in vars(record).items()
            if key not in _STANDARD and not key.startswith("_") and value is not None}


class TextFormatter(logging.Formatter):
    """`TIME LEVEL logger: message key=value ...`"""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = extra_fields(record)
        if not fields:
            return text
        pairs = " ".join(f"{key}={_text_value(value)}" for key, value in fields.items())
        head, newline, rest = text.partition("\n")  # keep a traceback below the fields
        return f"{head} {pairs}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the extra fields, and `exc`
    (the traceback text) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                  + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in extra_fields(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def _text_value(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (" " in text or not text or "=" in text) else text
