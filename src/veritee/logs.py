"""Structured logs of Veritee's services (verifier, secret service, node agent): JSON lines on
stderr, one schema for all: ``ts`` (UTC, ms), ``level``, ``logger``, ``pid``, ``msg``, then the
record's own fields (``appraisal``: the verifier's appraisal id, as in the EAR's ``jti``).

Library code logs with ``logging`` and extra fields (``logger.info("...", extra={...})``);
this formatter turns a record, extras included, into a JSON line a log pipeline can index.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# LogRecord attributes that are plumbing, not content (uvicorn adds a terminal-coloured copy
# of its message).
_STANDARD = frozenset(
    {
        *vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)),
        "message",
        "asctime",
        "color_message",
    }
)


class JsonFormatter(logging.Formatter):
    """``{"ts": ..., "level": ..., "logger": ..., "msg": ..., **extra}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def log_config(level: str = "info", *, access_log: bool = False) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn and Veritee: JSON lines on stderr."""
    lvl = level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "veritee": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": lvl, "propagate": False},
            "uvicorn.error": {"level": lvl},
            "uvicorn.access": {
                "handlers": ["stderr"] if access_log else [],
                "level": lvl if access_log else "WARNING",
                "propagate": False,
            },
        },
    }
