"""serve.py: the HTTP API and the page, for checkpoints of char_gpt.py and of char_rnn.py, through a real client
and a real browser.

Each chapter trains a tiny checkpoint once; `python serve.py --out_dir RUN --port 0` is started on it in a
subprocess, the way a user starts it, and spoken to with urllib and raw sockets.
"""

import http.client
import importlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
import torch
from browser import CHROMIUM, Browser
from helpers import REPO, SMALL_TEXT, assert_one_line_error, run

SCRIPTS = ["char_gpt.py", "char_rnn.py"]
TINY = {
    "char_gpt.py": ["--n_layer", 1, "--n_head", 2, "--n_embd", 16, "--block_size", 16, "--batch_size", 4],
    "char_rnn.py": ["--n_layer", 1, "--n_embd", 16, "--block_size", 16, "--batch_size", 4],
}


@pytest.fixture(scope="module", params=SCRIPTS)
def checkpoint(request, tmp_path_factory):
    script, out = request.param, tmp_path_factory.mktemp("serve")
    (out / "text.txt").write_text(SMALL_TEXT, encoding="utf-8")
    proc = run(script, "--input", out / "text.txt", "--out_dir", out / "run", "--max_iters", 30, "--eval_iters", 2,
               "--max_new_tokens", 1, *TINY[script])
    assert proc.returncode == 0, proc.stderr
    return script, out / "run"


def start_server(out_dir, *args):
    """Start `serve.py --out_dir out_dir --port 0`; returns (process, base URL, lines) once it prints its address."""
    cmd = [sys.executable, "-u", str(REPO / "serve.py"), "--out_dir", str(out_dir), "--port", "0", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("serving"):
            return proc, line.split(" at ")[1].split()[0].rstrip("/"), lines
    raise AssertionError(f"the server did not start: {''.join(lines)} {proc.stderr.read()}")


SERVER_FLAGS = ["--max_new_tokens", 123, "--temperature", 0.7, "--top_k", 9, "--seed", 5]  # none the default


@pytest.fixture(scope="module")
def server(checkpoint):
    script, out_dir = checkpoint
    before = {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()}
    proc, url, lines = start_server(out_dir, *SERVER_FLAGS)
    yield script, url, lines
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err  # Ctrl-C stops it cleanly
    assert "Traceback" not in err
    assert {p.name: p.stat().st_mtime_ns for p in out_dir.iterdir()} == before  # it wrote nothing


def post(url, body, timeout=60):
    """POST raw bytes (or a JSON-able object); returns (status, parsed JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + "/generate", data=data, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def stream(url, body, timeout=60):
    """POST with "stream": true; returns the list of pieces as they arrived."""
    req = urllib.request.Request(url + "/generate", data=json.dumps({**body, "stream": True}).encode(),
                                 method="POST")
    pieces = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        assert r.headers["Transfer-Encoding"] == "chunked"
        while piece := r.read1():
            pieces.append(piece.decode())
    return pieces


# ---------------------------------------------------------------- what it answers

def test_the_first_line_names_the_address_and_the_model(server):
    script, url, lines = server
    line = lines[-1]
    assert url.startswith("http://127.0.0.1:")
    for word in (script.removesuffix(".py"), "parameters", "vocabulary", "30 iterations", "val loss"):
        assert word in line, line
    assert not any(line.startswith("warning") for line in lines)


def test_health(server):
    script, url, _ = server
    with urllib.request.urlopen(url + "/health", timeout=30) as r:
        about = json.loads(r.read())
    assert about["kind"] == script.removesuffix(".py") and about["iters"] == 30
    assert about["vocab_size"] > 50 and about["parameters"] > 1000


def test_generate_is_deterministic_by_seed_and_equals_the_command_line_sample(server, checkpoint):
    script, url, _ = server
    body = {"prompt": "ROMEO:", "max_new_tokens": 40, "temperature": 0.9, "top_k": 20, "seed": 7}
    status, first = post(url, body)
    assert status == 200 and len(first["text"]) == 40
    assert first["settings"] == {**body, "stream": False}
    assert post(url, body)[1]["text"] == first["text"]
    assert post(url, {**body, "seed": 8})[1]["text"] != first["text"]
    cli = run(script, "--sample_only", "--out_dir", checkpoint[1], "--prompt", "ROMEO:", "--max_new_tokens", 40,
              "--temperature", 0.9, "--top_k", 20, "--seed", 7)
    assert cli.stdout.split("--- sample ---\n")[1] == "ROMEO:" + first["text"] + "\n"


def test_defaults_come_from_the_command_line(server):
    """The server was started with --max_new_tokens 123 --temperature 0.7 --top_k 9 --seed 5: what a request
    leaves out comes from there (and the seed gives the text that seed gives when asked for)."""
    _, url, _ = server
    status, answer = post(url, {"prompt": "A"})
    assert status == 200 and len(answer["text"]) == 123
    assert answer["settings"] == {"prompt": "A", "max_new_tokens": 123, "temperature": 0.7, "top_k": 9, "seed": 5,
                                  "stream": False}
    explicit = {"prompt": "A", "max_new_tokens": 123, "temperature": 0.7, "top_k": 9, "seed": 5}
    assert post(url, explicit)[1]["text"] == answer["text"]


def test_streaming_sends_the_same_text_piece_by_piece(server):
    _, url, _ = server
    body = {"prompt": "JULIET:", "max_new_tokens": 60, "seed": 3}
    pieces = stream(url, body)
    assert "".join(pieces) == post(url, body)[1]["text"]
    assert len(pieces) > 5  # arrived as it was sampled, not all at once


def test_the_page_is_self_contained(server):
    _, url, _ = server
    with urllib.request.urlopen(url + "/", timeout=30) as r:
        page = r.read().decode()
        assert r.headers["Content-Type"].startswith("text/html")
    assert "/generate" in page and "<textarea" in page and "white-space: pre-wrap" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page  # nothing from elsewhere


# ---------------------------------------------------------------- bad requests: a status and one line

@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 400, ["not JSON"]),
    (b"[1, 2]", 400, ["JSON object"]),
    ({"prompt": "A", "length": 5}, 400, ["unknown field length"]),
    ({"prompt": "A", "max_new_tokens": "5"}, 400, ["max_new_tokens", "int"]),
    ({"prompt": "A", "max_new_tokens": True}, 400, ["max_new_tokens", "int"]),
    ({"prompt": "A", "temperature": "hot"}, 400, ["temperature"]),
    ({"max_new_tokens": 5}, 400, ["prompt"]),
    ({"prompt": "ROMEO~\u00e9"}, 400, ["~", "\u00e9"]),
    ({"prompt": "A", "max_new_tokens": 5001}, 400, ["5000"]),
    ({"prompt": "A", "max_new_tokens": 0}, 400, ["max_new_tokens"]),
    ({"prompt": "A", "temperature": -1}, 400, ["temperature"]),
    (b'{"prompt": "A", "temperature": NaN}', 400, ["temperature"]),
    (b'{"prompt": "A", "temperature": Infinity}', 400, ["temperature"]),
    ({"prompt": "A", "top_k": 0}, 400, ["top_k"]),
    ({"prompt": "A", "seed": 2**64}, 400, ["seed"]),
    ({"prompt": "A", "seed": -1}, 400, ["seed"]),
    (b'{"prompt": "' + b"a" * 70_000 + b'"}', 413, ["limit"]),
])
def test_bad_requests_get_a_status_and_a_one_line_error(server, body, status, words):
    _, url, _ = server
    got, answer = post(url, body)
    assert got == status, answer
    assert set(answer) == {"error"} and "\n" not in answer["error"]
    for w in words:
        assert w in answer["error"], answer
    assert post(url, {"prompt": "A", "max_new_tokens": 3})[0] == 200  # and it keeps serving


def test_a_content_length_that_is_not_a_size(server):
    _, url, _ = server
    host, port = url.removeprefix("http://").split(":")
    for length in (b"abc", b"-1"):
        s = socket.create_connection((host, int(port)), timeout=30)
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: %s\r\n\r\n{}" % length)
        assert s.recv(100).startswith(b"HTTP/1.1 400"), length
        s.close()
    assert post(url, {"prompt": "A", "max_new_tokens": 3})[0] == 200


@pytest.mark.parametrize("method, path, status", [("PUT", "/generate", 405), ("GET", "/generate", 405),
                                                  ("HEAD", "/", 405),
                                                  ("POST", "/", 405), ("DELETE", "/health", 405),
                                                  ("GET", "/nope", 404), ("POST", "/nope", 404)])
def test_wrong_method_or_path(server, method, path, status):
    _, url, _ = server
    req = urllib.request.Request(url + path, data=b"{}" if method in ("POST", "PUT") else None, method=method)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=30)
    assert e.value.code == status
    if method != "HEAD":  # (HEAD gets the headers alone)
        assert "error" in json.loads(e.value.read())


# ---------------------------------------------------------------- several clients, and clients that go away

def test_two_requests_at_once(server):
    _, url, _ = server
    results = {}

    def ask(seed):
        results[seed] = post(url, {"prompt": "A", "max_new_tokens": 200, "seed": seed})
    threads = [threading.Thread(target=ask, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[1][0] == results[2][0] == 200
    assert results[1][1]["text"] == post(url, {"prompt": "A", "max_new_tokens": 200, "seed": 1})[1]["text"]


def test_a_long_stream_does_not_block_a_short_request(server):
    _, url, _ = server
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", "/generate", json.dumps({"prompt": "A", "max_new_tokens": 5000, "stream": True}))
    long = conn.getresponse()
    long.read1()  # the long one has started
    t = time.perf_counter()
    assert post(url, {"prompt": "A", "max_new_tokens": 5})[0] == 200
    assert time.perf_counter() - t < 20
    conn.close()


def test_a_client_that_disconnects_mid_stream_or_stalls_does_not_wedge_the_server(server):
    _, url, _ = server
    host, port = url.removeprefix("http://").split(":")
    for _ in range(3):  # hang up in the middle of a stream
        s = socket.create_connection((host, int(port)), timeout=30)
        body = json.dumps({"prompt": "A", "max_new_tokens": 5000, "stream": True}).encode()
        s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert s.recv(100).startswith(b"HTTP/1.1 200")
        s.close()
    stalled = socket.create_connection((host, int(port)), timeout=30)
    stalled.sendall(b"POST /generate HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # and never the rest
    assert post(url, {"prompt": "A", "max_new_tokens": 5})[0] == 200
    stalled.close()


def module(name):
    """char_gpt, char_rnn or serve, imported from the repository."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module(name.removesuffix(".py"))


def wait_until(condition, seconds=10):
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.001)


def test_requests_take_turns_in_the_order_they_came():
    turns = module("serve").Turns(1)
    order = []

    def request(i):
        turns.begin()
        order.append(i)
        turns.end()
    turns.begin()                                            # a request is stepping; five more come, in order
    threads = []
    for i in range(5):
        threads.append(threading.Thread(target=request, args=(i,)))
        threads[-1].start()
        wait_until(lambda i=i: len(turns.queue) == i + 1)    # queued behind the others
    assert order == []                                       # nobody steps while the turn is held
    turns.end()
    for t in threads:
        t.join(10)
    assert order == [0, 1, 2, 3, 4] and turns.free == 1 and not turns.queue


def test_turns_let_n_step_at_once_and_no_more():
    turns = module("serve").Turns(2)
    turns.begin()
    turns.begin()                                            # two at once: neither waits
    third = threading.Thread(target=lambda: (turns.begin(), turns.end()))
    third.start()
    wait_until(lambda: len(turns.queue) == 1)                # the third waits
    turns.end()                                              # a turn frees: it goes to the third
    third.join(10)
    assert not third.is_alive() and not turns.queue
    turns.end()
    assert turns.free == 2


@pytest.mark.parametrize("script", SCRIPTS)
def test_sampling_settings_choose_threads_by_model_size_turn_onednn_off_and_are_restored(script):
    chapter = module(script)
    small, large = torch.nn.Linear(10, 10), torch.nn.Linear(1000, 1000)    # 110 and 1,001,000 parameters
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        onednn = torch.backends.mkldnn.enabled
        with chapter.sampling_settings(small):
            assert torch.get_num_threads() == 1 and not torch.backends.mkldnn.enabled
        assert torch.get_num_threads() == 2 and torch.backends.mkldnn.enabled == onednn
        with chapter.sampling_settings(large):
            assert torch.get_num_threads() == 2 and not torch.backends.mkldnn.enabled
        assert torch.get_num_threads() == 2 and torch.backends.mkldnn.enabled == onednn
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- starting it

def test_requests_sample_on_one_thread_whatever_the_model_size(checkpoint, monkeypatch):
    """Requests sample in threads of their own, where a second intra-op thread slows every step: the server
    runs with one, even for a model large enough that the command line would take two."""
    script, out_dir = checkpoint
    serve, chapter = module("serve"), module(script)
    monkeypatch.setattr(chapter, "SMALL_STEP", 0)        # as if the model were large
    monkeypatch.setattr(serve.signal, "signal", lambda *a: None)
    seen = {}

    class Server:                                       # stands in for ThreadingHTTPServer
        server_address = ("127.0.0.1", 0)

        def __init__(self, address, handler):
            pass

        def serve_forever(self):
            seen.update(threads=torch.get_num_threads(), onednn=torch.backends.mkldnn.enabled)
            raise KeyboardInterrupt

        def server_close(self):
            pass
    monkeypatch.setattr("http.server.ThreadingHTTPServer", Server)
    torch.set_num_threads(2)
    try:
        serve.serve(serve.parse_args(["--out_dir", str(out_dir)]))
        assert seen == {"threads": 1, "onednn": False}
        assert torch.get_num_threads() == 2                 # restored when serving stops
    finally:
        torch.set_num_threads(os.cpu_count() or 1)


def test_listening_beyond_this_machine_warns(checkpoint):
    script, out_dir = checkpoint
    proc, url, lines = start_server(out_dir, "--host", "0.0.0.0")
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert any(line.startswith("warning") and "anyone" in line for line in lines)
    assert proc.returncode == 0


def test_the_address_is_printed_only_once_a_signal_stops_the_server_cleanly(checkpoint, monkeypatch):
    """A client (or a test) may send SIGTERM the moment it reads the address; by then the handler must be the one
    that stops the server cleanly, or the process dies of the signal (exit -15) under load. In-process: a print
    that records the SIGTERM handler when the address is printed, then acts as a Ctrl-C right after it."""
    import serve
    script, out_dir = checkpoint
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    seen, said = [], []

    def print_then_interrupt(*args, **kwargs):
        said.append(" ".join(map(str, args)))
        if said[-1].startswith("serving"):
            seen.append(signal.getsignal(signal.SIGTERM))
            raise KeyboardInterrupt
    monkeypatch.setattr("builtins.print", print_then_interrupt)
    try:
        serve.serve(serve.parse_args(["--out_dir", str(out_dir), "--port", "0"]))
    except KeyboardInterrupt:
        pytest.fail("a Ctrl-C right after the address escaped serve(): the address was printed before the handlers")
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.set_num_threads(os.cpu_count() or 1)
    assert seen == [signal.default_int_handler]
    assert said[-1] == "stopped serving"


def test_serving_without_a_checkpoint_is_one_line(tmp_path):
    assert_one_line_error(run("serve.py", "--out_dir", tmp_path), "no checkpoint")


def test_a_damaged_checkpoint_or_bad_flags_are_one_line(tmp_path):
    (tmp_path / "ckpt.pt").write_bytes(b"not a checkpoint")
    assert_one_line_error(run("serve.py", "--out_dir", tmp_path), "not a readable checkpoint")
    serve = module("serve")
    for flags, words in [(["--top_k=0"], "--top_k"), (["--max_new_tokens=0"], "--max_new_tokens"),
                         (["--port=x"], "--port"), (["--device=cuda:7"], "--device")]:
        with pytest.raises(serve.UsageError, match=words):
            serve.parse_args(flags)


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_chapters_send_serve_to_serve_py(script):
    assert_one_line_error(run(script, "--serve"), "serve.py")


@pytest.fixture
def in_process_server(checkpoint, monkeypatch):
    """The script's handler on a free port in a thread of this process, the socket timeout cut to 0.5 s,
    and a count of the characters each generate call drew."""
    from http.server import ThreadingHTTPServer
    script, out_dir = checkpoint
    serve, chapter = module("serve"), module(script)
    monkeypatch.setattr(serve, "SOCKET_TIMEOUT", 0.5)
    drawn = []                                  # per generate call: [characters drawn, finished]
    generate = chapter.generate_fast

    def counting_generate(*args, on_token=None, **kw):
        drawn.append([0, False])
        mine = drawn[-1]

        def count(ids):
            mine[0] += 1
            on_token(ids)
        try:
            return generate(*args, on_token=count, **kw)
        finally:
            mine[1] = True
    monkeypatch.setattr(chapter, "generate_fast", counting_generate)
    model, itos = chapter.load_model(out_dir)
    cfg = serve.parse_args(["--out_dir", str(out_dir)])
    handler = serve.make_handler(chapter, model, itos, "cpu", cfg, {"kind": script}, serve.Turns(1))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], drawn
    server.shutdown()
    server.server_close()


def test_sampling_stops_within_a_few_steps_after_the_client_hangs_up(in_process_server):
    port, drawn = in_process_server
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    body = json.dumps({"prompt": "A", "max_new_tokens": 5000, "stream": True}).encode()
    s.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    assert s.recv(100).startswith(b"HTTP/1.1 200")
    wait_until(lambda: drawn and drawn[0][0] > 0)               # sampling has begun
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # hang up with a reset
    s.close()
    at_hang_up = drawn[0][0]
    assert at_hang_up < 5000 - 4 * 8                          # the hang-up came while sampling went on
    wait_until(lambda: drawn[0][1], seconds=60)               # the request's sampling ended
    assert drawn[0][0] - at_hang_up <= 4 * 8, (at_hang_up, drawn[0])  # a few turns of 8 characters, not 5,000


def test_a_stalled_client_is_dropped_after_the_socket_timeout(in_process_server):
    port, _ = in_process_server
    stalled = socket.create_connection(("127.0.0.1", port), timeout=10)
    stalled.sendall(b"POST /generate HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")  # and never the rest
    t = time.perf_counter()
    assert stalled.recv(100) == b""                           # the server closed the connection
    assert time.perf_counter() - t < 5
    stalled.close()


def test_a_port_already_in_use_is_one_line(checkpoint):
    _, out_dir = checkpoint
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    serve = module("serve")
    try:
        with pytest.raises(serve.UsageError, match="cannot listen.*choose another --port") as e:
            serve.main(["--out_dir", str(out_dir), "--port", str(taken.getsockname()[1])])
        assert "\n" not in str(e.value)
    finally:
        taken.close()


# ---------------------------------------------------------------- the page in a real browser

@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("REQUIRE_BROWSER"),
                    reason="no Chromium here (.ci/run installs it: apt-get install chromium)")
def test_the_page_generates_text_in_a_headless_browser(server):
    """Load /, type a prompt, press Generate, and find the streamed text in the page."""
    _, url, _ = server
    browser = Browser()
    try:
        browser.open(url + "/")
        browser.wait_for("document.getElementById('about').textContent.includes('parameters')")
        browser.js("document.getElementById('prompt').value = 'ROMEO:';"
                   "document.getElementById('max_new_tokens').value = '80';"
                   "document.getElementById('seed').value = '5';"
                   "document.getElementById('go').click()")
        assert browser.wait_for("document.body.dataset.done") == "1", browser.js("document.body.innerText")
        shown = browser.js("document.getElementById('out').textContent")
        temperature = float(browser.js("document.getElementById('temperature').value"))  # the page's own
    finally:
        browser.close()
    expected = post(url, {"prompt": "ROMEO:", "max_new_tokens": 80, "seed": 5, "temperature": temperature})[1]["text"]
    assert shown == "ROMEO:" + expected
