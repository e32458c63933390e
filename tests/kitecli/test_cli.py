"""kitecli against real kites and a real Kontrol: output formats and exit codes of every command but
the bundle ones (test_bundles.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import gevent
import pytest

from kite import GenericError, Kite, kitekey, testutil
from kite.testkeys import key_pair
from kitecli import __version__
from kontrol.machines import password_authenticator
from tests.kontrol.conftest import free_port, start_kontrol, wait_until
from tests.serving import serve_kite

from .conftest import KITECLI, ROOT, kitecli


def math_kite(**config) -> Kite:
    """A served kite of the test user (trusting the test Kontrol key) with methods for every case."""
    k = testutil.new_kite("math", **config)
    k.method("square", auth=False)(lambda r: r.args.one().must_float64() ** 2)
    k.method("echo", auth=False)(lambda r: list(r.args))
    k.method("fail", auth=False)(lambda r: (_ for _ in ()).throw(GenericError("boom")))

    def countdown(r):
        count, fn = r.args.slice_of_length(2)
        callback = fn.must_function()
        for i in range(count.must_int(), 0, -1):
            callback(i)
        gevent.spawn_later(0.3, callback, "late")
        return "done"

    k.method("countdown", auth=False)(countdown)
    k.method("whoami")(lambda r: {"username": r.username, "auth": r.auth.type if r.auth else None})
    return serve_kite(k)


@pytest.fixture(scope="module")
def math():
    k = math_kite()
    yield k
    k.close()


@pytest.fixture
def key_of_test_user(kite_home):
    """$KITE_HOME/kite.key of the test user, signed by the key the math kite trusts."""
    testutil.write_kite_key(str(kite_home))
    return kite_home / "kite.key"


# -- tell -----------------------------------------------------------------------------


def test_tell_prints_the_result_as_compact_json_when_piped(math):
    r = kitecli("tell", math.url, "square", "4")
    assert (r.code, r.out, r.err) == (0, "16\n", "")


def test_tell_arguments_are_json_when_they_parse_else_strings(math):
    r = kitecli("tell", math.url, "echo", "4", '"4"', '{"a":1}', "[1,2]", "true", "null", "hello", "NaN", "-5")
    assert r.code == 0
    assert json.loads(r.out) == [4, "4", {"a": 1}, [1, 2], True, None, "hello", "NaN", -5]


def test_tell_in_kitectl_spelling_and_global_options_anywhere(math):
    r = kitecli("tell", "-to", math.url, "-method", "echo", "-timeout", "5s", "1", "x")
    assert (r.code, json.loads(r.out)) == (0, [1, "x"])
    before = kitecli("--json", "--timeout", "3s", "tell", math.url, "square", "3")
    after = kitecli("tell", math.url, "square", "3", "--json", "--timeout", "3s")
    assert before.out == after.out == "9\n"
    host_port = math.url.removeprefix("http://").removesuffix("/kite")
    assert kitecli("tell", host_port, "square", "2").out == "4\n"  # host:port means http://host:port/kite
    raw = math.url.replace("http://", "ws://") + "/websocket"
    assert kitecli("tell", raw, "square", "5").out == "25\n"


@pytest.mark.parametrize("transport", ["xhr_polling", "xhr_streaming", "auto"])
def test_tell_over_every_transport(math, transport):
    r = kitecli("--transport", transport, "tell", math.url, "square", "6")
    assert (r.code, r.out) == (0, "36\n")


def test_an_error_answer_exits_1_with_type_and_message(math):
    r = kitecli("tell", math.url, "fail")
    assert (r.code, r.out, r.err) == (1, "", "kitecli: genericError: boom\n")
    r = kitecli("tell", math.url, "nosuch", "--json")
    assert r.code == 1 and r.err == "kitecli: methodNotFound: Method not found: nosuch\n"
    assert json.loads(r.out) == {"error": {"type": "methodNotFound", "message": "Method not found: nosuch"}}


def test_an_unreachable_kite_exits_2():
    port = free_port()
    r = kitecli("tell", f"http://127.0.0.1:{port}/kite", "square", "4")
    assert r.code == 2 and r.out == ""
    assert r.err.startswith(f"kitecli: cannot reach http://127.0.0.1:{port}/kite: ") and "refused" in r.err


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "kitecli: no command given"),
        (("tell",), "kitecli: missing URL: kitecli tell URL METHOD [ARGS…]"),
        (("tell", "http://127.0.0.1:1/kite"), "kitecli: missing METHOD: kitecli tell URL METHOD [ARGS…]"),
        (("tell", "ftp://x/kite", "m"), "kitecli: invalid kite URL 'ftp://x/kite' (expected"),
        (("tell", "--timeout", "soon", "u", "m"), "kitecli: argument --timeout: invalid duration 'soon'"),
        (("frobnicate",), "kitecli: argument COMMAND: invalid choice: 'frobnicate'"),
        (("ping", "127.0.0.1:1", "--count", "0"), "kitecli: argument -c/--count: invalid count '0'"),
        (("query", "--name", "math"), "kitecli: --name needs --environment too"),
        (("register",), "kitecli: the following arguments are required: --to"),
    ],
)
def test_bad_usage_exits_64_with_the_usage_and_one_line(args, message):
    r = kitecli(*args)
    assert r.code == 64 and r.out == ""
    assert r.err.startswith("usage: kitecli")
    assert r.err.splitlines()[-1].startswith(message)


def test_every_command_has_help():
    for command in ("tell", "ping", "query", "watch", "register", "showkey", "version",
                    "install", "list", "run", "uninstall"):
        r = kitecli(command, "--help")
        assert r.code == 0 and r.out.startswith(f"usage: kitecli {command}"), command
    top = kitecli("--help")
    assert top.code == 0 and "Exit codes: 0 ok, 1 the kite answered with an error" in top.out


def test_tell_authenticates_with_the_local_kite_key_or_a_token_or_nothing(math, key_of_test_user):
    assert json.loads(kitecli("tell", math.url, "whoami").out) == {"username": testutil.TEST_USERNAME,
                                                                   "auth": "kiteKey"}
    token = testutil.new_token("bob", testutil.audience_for(math))
    assert json.loads(kitecli("tell", math.url, "whoami", "--token", token).out) == {"username": "bob",
                                                                                     "auth": "token"}
    r = kitecli("tell", math.url, "whoami", "--no-auth")
    assert (r.code, r.err) == (1, "kitecli: authenticationError: No authentication information is provided\n")


def test_tell_without_a_kite_key_sends_no_credentials(math):
    r = kitecli("tell", math.url, "whoami")
    assert r.code == 1 and "No authentication information is provided" in r.err


def test_callbacks_print_one_json_line_each_and_wait_keeps_listening(math):
    r = kitecli("tell", math.url, "countdown", "3", "--callback")
    assert r.code == 0
    assert r.lines == ['{"callback":[3]}', '{"callback":[2]}', '{"callback":[1]}', '"done"']
    r = kitecli("tell", math.url, "countdown", "1", "--callback", "--wait", "2s")
    assert r.lines == ['{"callback":[1]}', '"done"', '{"callback":["late"]}']


def test_a_bad_kite_key_is_one_clear_line(math, kite_home):
    key = kite_home / "kite.key"
    key.write_text("not a jwt")
    key.chmod(0o600)  # as every kite.key is written (a readable one adds a warning line)
    r = kitecli("tell", math.url, "square", "2")
    assert r.code == 1 and r.err.startswith("kitecli: ") and "kite.key" in r.err and len(r.err.splitlines()) == 1


# -- ping -----------------------------------------------------------------------------


def test_ping_prints_each_round_trip_and_a_summary(math):
    r = kitecli("ping", math.url, "--count", "3", "--interval", "10ms")
    assert r.code == 0
    assert r.lines[0] == f"PING {math.url} (kite.ping)"
    for seq, line in enumerate(r.lines[1:4], 1):
        assert re.fullmatch(rf"pong from {re.escape(math.url)}: seq={seq} time=\d+\.\d{{3}} ms", line), line
    assert r.lines[4] == f"--- {math.url} ping statistics ---"
    assert re.fullmatch(r"3 calls, 3 answered, 0% lost, time \d+ ms", r.lines[5])
    assert re.fullmatch(r"rtt min/avg/max/p99 = [\d.]+/[\d.]+/[\d.]+/[\d.]+ ms", r.lines[6])
    low, avg, high, p99 = map(float, r.lines[6].split(" = ")[1].removesuffix(" ms").split("/"))
    assert low <= avg <= high and p99 == high


def test_ping_json_lines_and_interrupt(math):
    r = kitecli("--json", "ping", math.url, "-c", "2", "-i", "0")
    assert r.code == 0
    first, second, summary = map(json.loads, r.lines)
    assert first["seq"] == 1 and second["seq"] == 2 and first["ms"] > 0
    assert summary["summary"]["calls"] == summary["summary"]["answered"] == 2
    proc = subprocess.Popen([str(KITECLI), "ping", math.url, "-i", "50ms"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("PING ")
        assert proc.stdout.readline().startswith("pong from ")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=15)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "ping statistics" in out and "Traceback" not in err


def test_ping_unreachable_exits_2(dead_port):
    assert kitecli("ping", f"127.0.0.1:{dead_port}", "-c", "1").code == 2


# -- Kontrol: query, watch, register, showkey ------------------------------------------


@pytest.fixture
def kontrol():
    k = start_kontrol("memory")
    yield k
    k.close()


@pytest.fixture
def alice_key(kontrol, kite_home):
    """$KITE_HOME/kite.key of alice, issued by the Kontrol."""
    return kitekey.write(kontrol.register_user("alice"))


def registered_math(kontrol, username="alice"):
    k = Kite("math", "1.0.0")
    c = k.config
    c.username, c.environment, c.ip, c.port = username, "prod", "127.0.0.1", 0
    c.kite_key = kontrol.register_user(username)
    c.kontrol_key, c.kontrol_user, c.kontrol_url = kontrol.keypairs.current().public, "koding", kontrol.kite.url
    serve_kite(k)
    k.register(k.url)
    return k


def test_query_lists_matching_kites_as_a_table_or_json(kontrol, alice_key):
    math = registered_math(kontrol)
    try:
        ident = math.kite()
        path = f"/alice/prod/math/1.0.0/unknown/{ident.hostname}/{ident.id}"
        r = kitecli("query")
        assert r.code == 0
        assert re.fullmatch(r"KITE +URL", r.lines[0])
        assert r.lines[1].split() == [path, math.url] and len(r.lines) == 2
        assert r.lines[1].index(math.url) == r.lines[0].index("URL")  # aligned
        r = kitecli("query", "--environment", "prod", "--name", "math", "--json")
        assert json.loads(r.out) == [{"kite": ident.to_wire(), "url": math.url}]
        r = kitecli("query", "--environment", "dev")
        assert (r.code, r.out, r.err) == (1, "", "kitecli: no kites found\n")
        r = kitecli("query", "--username", "koding")  # Kontrol registers itself
        assert r.code == 0 and "/koding/" in r.lines[1] and "/kontrol/" in r.lines[1]
    finally:
        math.close()


def test_query_without_a_kontrol_or_with_one_down(kite_home, dead_port):
    r = kitecli("query")
    assert r.code == 64 and "no Kontrol to ask" in r.err
    r = kitecli("query", "--kontrol", f"127.0.0.1:{dead_port}", "--username", "x", "--timeout", "1s")
    assert r.code == 2 and r.err.startswith("kitecli: cannot reach Kontrol at ")


def test_watch_streams_register_and_deregister_until_interrupted(kontrol, alice_key):
    proc = subprocess.Popen([str(KITECLI), "watch", "--environment", "prod"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = gevent.spawn(lambda: lines.extend(iter(proc.stdout.readline, "")))
    try:
        wait_until(lambda: any(kontrol._watchers.values()))  # the watch has reached Kontrol
        math = registered_math(kontrol)
        ident_id = math.kite().id
        wait_until(lambda: any(line.startswith("REGISTER ") and ident_id in line for line in lines))
        math.close()
        wait_until(lambda: any(line.startswith("DEREGISTER ") and ident_id in line for line in lines))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 130
    finally:
        proc.kill()
        reader.join(5)
    register = next(line for line in lines if line.startswith("REGISTER "))
    assert register.split()[1:] == [f"/alice/prod/math/1.0.0/unknown/{math.kite().hostname}/{ident_id}", math.url]
    assert proc.stderr.read() == ""  # no hub report of the KeyboardInterrupt either


def test_register_writes_a_kite_key_once_unless_forced(kontrol, kite_home, tmp_path):
    password = tmp_path / "password"
    password.write_text("s3cret\n")
    kontrol.machine_authenticator = password_authenticator("s3cret")
    r = kitecli("register", "--to", kontrol.kite.url, "--username", "carol", "--password-file", str(password))
    assert r.code == 0, r.err
    path = kite_home / "kite.key"
    assert r.out == f"wrote the kite.key of 'carol' (issued by 'koding', Kontrol {kontrol.kite.url}) to {path}\n"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    key = kitekey.parse(path=str(path))
    assert (key.username, key.kontrol_user, key.kontrol_url) == ("carol", "koding", kontrol.kite.url)
    again = kitecli("register", "--to", kontrol.kite.url, "--username", "carol", "--password-file", str(password))
    assert (again.code, again.err) == (1, f"kitecli: a kite.key exists at {path}; use --force to replace it\n")
    assert path.read_text() == key.raw
    forced = kitecli("register", "--to", kontrol.kite.url, "--username", "dave", "--password-file", str(password),
                     "--force", "--json")
    assert forced.code == 0 and json.loads(forced.out)["username"] == "dave"
    assert kitekey.parse(path=str(path)).username == "dave"


def test_register_is_refused_with_a_wrong_password_or_by_default(kontrol, kite_home, tmp_path):
    wrong = tmp_path / "wrong"
    wrong.write_text("guess")
    r = kitecli("register", "--to", kontrol.kite.url, "--username", "carol", "--password-file", str(wrong))
    assert (r.code, r.err) == (1, "kitecli: genericError: cannot authenticate user: "
                                  "registerMachine is disabled on this Kontrol\n")
    kontrol.machine_authenticator = password_authenticator("s3cret", users=["carol"])
    r = kitecli("register", "--to", kontrol.kite.url, "--username", "carol", "--password-file", str(wrong))
    assert (r.code, r.err) == (1, "kitecli: genericError: cannot authenticate user: wrong machine password\n")
    r = kitecli("register", "--to", kontrol.kite.url, "--username", "eve", env={"KITE_MACHINE_PASSWORD": "s3cret"})
    assert r.code == 1 and "user 'eve' may not register machines here" in r.err
    assert not (kite_home / "kite.key").exists()
    r = kitecli("register", "--to", kontrol.kite.url)  # stdin is not a terminal: no prompt
    assert r.code == 64 and "--username is required when not on a terminal" in r.err


def test_kontrol_command_opens_register_machine_with_a_password_file(kite_home, tmp_path):
    """The real `kontrol --machine-password-file` and `kitecli register` against it."""
    password = tmp_path / "password"
    password.write_text("s3cret")
    port = free_port()
    env = {**os.environ, "KONTROL_PORT": str(port), "KONTROL_IP": "127.0.0.1", "KONTROL_STORAGE": "memory",
           "KONTROL_USERNAME": "koding", "KONTROL_MACHINE_USERS": "carol"}
    kontrol_home = tmp_path / "kontrol-home"
    env["KITE_HOME"] = str(kontrol_home)
    assert subprocess.run([str(KITECLI.with_name("kontrol")), "--initial"], cwd=ROOT, env=env, capture_output=True,
                          timeout=60).returncode == 0
    proc = subprocess.Popen([str(KITECLI.with_name("kontrol")), "--machine-password-file", str(password)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}/kite"
        deadline = time.monotonic() + 30
        while (r := kitecli("register", "--to", url, "--username", "carol", "--password-file",
                            str(password))).code == 2 and time.monotonic() < deadline:
            gevent.sleep(0.2)
        assert r.code == 0, r.err
        assert kitekey.parse(path=str(kite_home / "kite.key")).username == "carol"
    finally:
        proc.terminate()
        proc.wait(15)


def test_showkey_prints_the_claims_in_kitectl_order(kite_home):
    testutil.write_kite_key(str(kite_home), "alice", now=1700000000)
    r = kitecli("showkey")
    assert r.code == 0
    names = [line.split()[0] for line in r.lines if not line.startswith("    ")]
    assert names == ["sub", "iss", "kontrolURL", "iat", "jti", "kontrolKey"]
    assert r.lines[0].split() == ["sub", "alice"]
    assert "iat         1700000000 (2023-11-14 22:13:20 UTC)" in r.lines
    assert r.lines[-1] == "    -----END PUBLIC KEY-----"
    data = json.loads(kitecli("showkey", "--json").out)
    assert list(data) == ["sub", "iss", "kontrolURL", "iat", "jti", "kontrolKey"]
    assert data["kontrolKey"] == key_pair().public_pem


def test_showkey_without_a_kite_key(kite_home):
    r = kitecli("showkey")
    assert r.code == 1
    assert r.err == (f"kitecli: kite.key not found at {kite_home / 'kite.key'} "
                     "(get one with: kitecli register --to KONTROL_URL)\n")


def test_version():
    assert kitecli("version").out == f"kitecli {__version__}\n"
    assert json.loads(kitecli("version", "--json").out) == {"version": __version__, "name": "kitecli"}
    proc = subprocess.run([sys.executable, "-m", "kitecli", "version"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.stdout == f"kitecli {__version__}\n"
