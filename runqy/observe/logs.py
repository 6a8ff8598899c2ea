"""The running task on every log record, and runqy's stderr format: text or one JSON object per line.

:func:`install_task_records` wraps the log record factory, so that every record made
while a handler runs (any logger, any thread of a runner, in child processes too)
carries ``runqy_task_id``, ``runqy_task_type`` and ``runqy_attempt``, read from the
same context as :func:`runqy.current_task`. The names have a prefix because logging
refuses an ``extra=`` key that overwrites a record attribute, and ``extra={"task_id": ...}``
is common in handlers' own code.

Every line runqy writes to stderr stays under the Go worker's 1 MiB line limit: the
message and the traceback are clipped, saying so.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final, Literal

from runqy.context import _current

__all__ = [
    "JsonFormatter",
    "LogFormat",
    "MAX_LOG_LINE_BYTES",
    "TextFormatter",
    "configure_logging",
    "configured_format",
    "install_task_records",
]

LogFormat = Literal["text", "json"]

#: The Go worker drops a stderr line longer than 1 MiB; runqy's lines stay well below.
MAX_LOG_LINE_BYTES: Final = 1 << 20
#: The message and the traceback are each clipped to this many characters (JSON escapes
#: of non-ASCII text take up to 12 bytes per character, so both fit under the limit).
MAX_FIELD_CHARS: Final = 32 * 1024
_NO_TASK: Final = "-"

log = logging.getLogger("runqy")
_installed = False


def install_task_records() -> None:
    """Make every log record carry the running task's id, type and attempt (``-``, ``-``, 0 outside a task)."""
    global _installed
    if _installed:
        return
    make = logging.getLogRecordFactory()

    def task_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        running = _current.get(None)
        if running is None:
            record.runqy_task_id = record.runqy_task_type = _NO_TASK
            record.runqy_attempt = 0
        else:
            request, record.runqy_attempt, _ = running
            record.runqy_task_id = request.task_id
            record.runqy_task_type = request.type or _NO_TASK
        return record

    logging.setLogRecordFactory(task_record)
    _installed = True


def clip(text: str, limit: int = MAX_FIELD_CHARS) -> str:
    """``text`` cut to ``limit`` characters, keeping its head and tail and saying how long it was."""
    if len(text) <= limit:
        return text
    half = limit // 2
    return f"{text[:half]}\n... [clipped: {len(text)} characters in all] ...\n{text[-half:]}"


class TextFormatter(logging.Formatter):
    """``PREFIX LEVEL message [task ID type=TYPE attempt=N]``, the task part only inside a task.

    ``prefix`` names the process (``runqy``, ``runqy[child 123]``); records of other
    loggers than runqy's also name their logger.
    """

    def __init__(self, prefix: str = "runqy") -> None:
        super().__init__()
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        message = clip(record.getMessage())
        if not record.name.startswith("runqy"):
            message = f"{record.name}: {message}"
        task_id = getattr(record, "runqy_task_id", _NO_TASK)
        if task_id != _NO_TASK and getattr(record, "runqy_event", None) is None:
            task_type, attempt = getattr(record, "runqy_task_type", _NO_TASK), getattr(record, "runqy_attempt", 0)
            message += f" [task {task_id} type={task_type} attempt={attempt}]"
        line = f"{self.prefix} {record.levelname} {message}"
        if record.exc_info:
            line += "\n" + clip(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp, level, logger, message, pid, task fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "timestamp": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": clip(record.getMessage()),
            "pid": record.process,
            "thread": record.threadName,
        }
        task_id = getattr(record, "runqy_task_id", _NO_TASK)
        if task_id != _NO_TASK:
            document["task_id"] = task_id
            document["task_type"] = getattr(record, "runqy_task_type", _NO_TASK)
            document["attempt"] = getattr(record, "runqy_attempt", 0)
        event = getattr(record, "runqy_event", None)
        if event is not None:
            document["event"] = event
            document.update(getattr(record, "runqy_fields", {}))
        if record.exc_info:
            document["exception"] = clip(self.formatException(record.exc_info))
        elif record.stack_info:
            document["exception"] = clip(self.formatStack(record.stack_info))
        line = json.dumps(document, default=str)
        if len(line) >= MAX_LOG_LINE_BYTES:  # only long fields of other kinds can get here (a huge task id)
            line = json.dumps({key: _shorten(value) for key, value in document.items()}, default=str)
        return line


def _shorten(value: Any) -> Any:
    return clip(value, 1024) if isinstance(value, str) else value


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


_format: LogFormat = "text"


def configure_logging(level: str | int, log_format: LogFormat = "text", prefix: str = "runqy") -> None:
    """Show runqy's lines at ``level`` on stderr in ``log_format``, with the task on every record.

    runqy's handler goes on the root logger, so that the handler's own records
    (warnings and above, unless the application lowers the root level) come out in the
    same format, with their task. An application that configured logging itself keeps
    its handlers; runqy only sets its own loggers' level then.
    """
    global _format
    install_task_records()
    log.setLevel(level)
    root = logging.getLogger()
    if root.handlers or log.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(prefix))
    root.addHandler(handler)
    _format = log_format
    if log_format == "json":
        logging.captureWarnings(True)  # a Python warning would otherwise be a bare text line


def configured_format() -> LogFormat:
    """The format runqy's handler writes in this process (child processes are told to write the same)."""
    return _format
