"""Keep credentials out of logs: a stream token travels in the query string (`?token=`), and
uvicorn's access log prints every request's path with its query. `RedactTokens` rewrites
`token=<value>` to `token=[redacted]` in the records of the loggers it is installed on."""

from __future__ import annotations

import logging
import re

# Loggers that print request targets with their query strings.
ACCESS_LOGGERS = ("uvicorn.access",)
_TOKEN = re.compile(r"([?&;](?:token|access_token)=)[^&;\s\"']*", re.IGNORECASE)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """`text` with the value of every `token=` query parameter replaced."""
    return _TOKEN.sub(r"\1" + REDACTED, text)


class RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install() -> None:
    """Add the filter to the access loggers (once per process, whoever configures them later:
    `logging.config.dictConfig` keeps a logger's filters)."""
    for name in ACCESS_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())
