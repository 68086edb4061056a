"""A log handler that keeps every record of a test, to grep a whole call's logs for secrets.

``LogCapture`` keeps each record with everything a handler could write of it:
its message and arguments, its traceback, and its lines as the server's own
formatters write them (``signaling.logs``: text and JSON, formatted when the
record is emitted, in the context that emitted it). ``assert_clean`` fails on
any key or token (``keys``) and any caller or agent text (``keep_secret``)
found in any of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from signaling.logs import JsonFormatter, TextFormatter

UVICORN_LOGGERS = ("uvicorn", "uvicorn.access")
"""Where uvicorn's records end with its default set-up (``uvicorn.error`` propagates to
``uvicorn``; neither propagates to the root)."""

MIN_TEXT_CHARS = 12
"""Call texts shorter than this are not looked for (they could occur by chance)."""


@dataclass(frozen=True, slots=True)
class Captured:
    """One record and the lines the server's formatters made of it."""

    record: logging.LogRecord
    text_line: str
    json_line: str


class LogCapture(logging.Handler):
    """Keeps every record it is given; ``assert_clean`` looks for secrets in them."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        super().__init__(logging.DEBUG)
        self.captured: list[Captured] = []
        self.keys: set[str] = set(keys)
        """API keys, tokens and secrets: in no record at all."""
        self.texts: set[str] = set()
        """What callers said and the agent answered."""
        self._text = TextFormatter()
        self._json = JsonFormatter()

    @property
    def records(self) -> list[logging.LogRecord]:
        """Every record kept, in order."""
        return [c.record for c in self.captured]

    def emit(self, record: logging.LogRecord) -> None:
        self.captured.append(Captured(record, self._text.format(record), self._json.format(record)))

    def watch_server_logs(self) -> None:
        """Keep uvicorn's records too, with its default logging set-up: its access log
        (at INFO) and errors, whose loggers do not propagate to the root.

        Call after each server start: uvicorn configures its loggers as it starts.
        (With ``signaling.logs``' set-up they propagate: the root's capture sees them.)
        """
        logging.getLogger("uvicorn.access").setLevel(logging.INFO)
        for name in UVICORN_LOGGERS:
            logger = logging.getLogger(name)
            if self not in logger.handlers:
                logger.addHandler(self)

    def unwatch(self) -> None:
        """Detach from the root and uvicorn's loggers."""
        for name in ("", *UVICORN_LOGGERS):
            logging.getLogger(name).removeHandler(self)

    def keep_secret(self, *texts: str) -> None:
        """Texts of a call to look for (short ones could occur by chance: skipped)."""
        self.texts.update(t for t in texts if len(t) >= MIN_TEXT_CHARS)

    def text_of(self, captured: Captured) -> str:
        """Everything a handler could write of a record: raw and formatted."""
        record = captured.record
        parts = [record.getMessage(), repr(record.args), captured.text_line, captured.json_line]
        if record.exc_info:
            parts.append(logging.Formatter().formatException(record.exc_info))
        if record.exc_text:
            parts.append(record.exc_text)
        if record.stack_info:
            parts.append(record.stack_info)
        return "\n".join(parts)

    def leaks(self) -> list[tuple[str, list[str]]]:
        """(logger, secrets found) of each record that holds a key, token or call text."""
        secrets = self.keys | self.texts
        out = []
        for captured in self.captured:
            text = self.text_of(captured)
            leaked = sorted(s for s in secrets if s in text)
            if leaked:
                out.append((captured.record.name, leaked))
        return out

    def assert_clean(self) -> None:
        """No key, token or call text in any record, raw or formatted."""
        assert self.texts, "no call texts registered: nothing was checked"
        leaks = self.leaks()
        assert not leaks, f"secrets logged: {leaks[:5]}"

    def logged(self, logger: str, fragment: str, level: int) -> bool:
        """Whether ``logger`` logged a message containing ``fragment`` at ``level``."""
        return any(
            r.name == logger and r.levelno == level and fragment in r.getMessage()
            for r in self.records
        )
