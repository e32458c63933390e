"""JSON-lines logs (kite.jsonlog): a real kite process logging with KITE_LOG_FORMAT=json, and the formatter."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kite import Config
from kite.jsonlog import (
    CALL_CONTEXT,
    CallContext,
    CallContextFilter,
    JsonFormatter,
    json_logging_on,
    set_log_format,
)

ROOT = Path(__file__).resolve().parent.parent

#: A kite that logs inside a call, called twice by a client kite, in a process logging JSON at DEBUG.
KITE_PROCESS = textwrap.dedent("""
    import logging
    from tests.gunicorn_app import make_math_kite
    from tests.serving import serve_kite
    from kite import Kite

    k = make_math_kite("greeter")  # alone on its logger (the module makes a "math" kite too)
    def greet(r):
        r.local_kite.log.info("greeting %s", r.args.one().must_string())
        logging.getLogger("app.handler").warning("from another logger")
        return "hi"
    k.handle_func("greet", greet)
    serve_kite(k)
    caller = Kite("caller", "2.0.0")
    c = caller.new_client(k.url)
    c.dial()
    c.tell("greet", "bob")
    c.tell("square", 3)
    print(k.id, caller.id, flush=True)
    c.close(); caller.close(); k.close()
""")


@pytest.fixture
def root_handler():
    """The root logger with one handler of the test's own writing to a buffer (restored afterwards)."""
    root = logging.getLogger()
    saved = root.handlers[:]
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    root.handlers = [handler]
    try:
        yield handler, buffer
    finally:
        root.handlers = saved


def test_a_kite_process_logs_json_lines_with_call_fields():
    env = {**os.environ, "KITE_LOG_FORMAT": "json", "KITE_LOG_LEVEL": "DEBUG"}
    run = subprocess.run([sys.executable, "-c", KITE_PROCESS], capture_output=True, text=True, timeout=30,
                         cwd=ROOT, env=env)
    assert run.returncode == 0, run.stderr
    kite_id, caller_id = run.stdout.split()
    lines = [json.loads(line) for line in run.stderr.splitlines()]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)

    greeting = next(line for line in lines if line["message"] == "greeting bob")
    assert greeting["level"] == "INFO" and greeting["logger"] == "kite.greeter"
    assert greeting["kite_id"] == kite_id and greeting["method"] == "greet"
    assert greeting["caller"].split("/")[3:5] == ["caller", "2.0.0"] and greeting["caller"].endswith(caller_id)
    assert isinstance(greeting["call_id"], int)
    other = next(line for line in lines if line["message"] == "from another logger")
    assert (other["logger"], other["method"], other["call_id"]) == ("app.handler", "greet", greeting["call_id"])

    done = [line for line in lines if "duration_ms" in line]
    assert [line["method"] for line in done] == ["greet", "square"]
    assert all(line["level"] == "DEBUG" and line["duration_ms"] >= 0 and line["kite_id"] == kite_id
               for line in done)
    assert done[0]["call_id"] == greeting["call_id"]
    serving = next(line for line in lines if line["message"].startswith("serving greeter"))
    assert serving["kite_id"] == kite_id and "method" not in serving  # outside a call: the kite's id only


def test_formatter_fields_from_extra_context_and_exceptions():
    formatter = JsonFormatter()
    record = logging.LogRecord("kite.x", logging.ERROR, __file__, 1, "failed %d", (3,), None)
    record.method, record.duration_ms = "square", 1.5
    line = json.loads(formatter.format(record))
    assert line["message"] == "failed 3" and line["method"] == "square" and line["duration_ms"] == 1.5
    assert line["time"].endswith("Z") and "caller" not in line

    token = CALL_CONTEXT.set(CallContext("kid", "echo", "/u/e/n/v/r/h/id", 7))
    try:
        record = logging.LogRecord("kite.x", logging.INFO, __file__, 1, "inside", (), None)
        CallContextFilter().filter(record)
    finally:
        CALL_CONTEXT.reset(token)
    line = json.loads(formatter.format(record))  # formatted later, elsewhere: the filter stamped it
    assert (line["kite_id"], line["method"], line["caller"], line["call_id"]) == ("kid", "echo", "/u/e/n/v/r/h/id", 7)

    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("kite.x", logging.ERROR, __file__, 1, "oops", (), sys.exc_info())
    assert "RuntimeError: boom" in json.loads(formatter.format(record))["exception"]


def test_switching_the_format_and_back(root_handler):
    handler, buffer = root_handler
    set_log_format("json")
    assert json_logging_on() and isinstance(handler.formatter, JsonFormatter)
    logging.getLogger("kite.test").warning("as json")
    set_log_format("plain")
    assert not json_logging_on() and not handler.filters
    logging.getLogger("kite.test").warning("as text")
    first, second = buffer.getvalue().splitlines()
    assert json.loads(first)["message"] == "as json"
    assert second.endswith("WARNING kite.test: as text")
    with pytest.raises(ValueError, match="unknown log format"):
        set_log_format("xml")


def test_config_reads_kite_log_format():
    assert Config().log_format == "plain"
    assert Config().read_environment_variables({"KITE_LOG_FORMAT": "JSON"}).log_format == "json"
    with pytest.raises(ValueError, match="KITE_LOG_FORMAT"):
        Config().read_environment_variables({"KITE_LOG_FORMAT": "xml"})
