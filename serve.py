"""serve.py: a trained character model behind a small web API and page. A short chapter of its own: what a
web API is, how text streams to a browser as it is sampled, and how requests share one model fairly.

    python char_gpt.py --max_seconds=60                  # train something to serve first
    python serve.py --out_dir out/char_gpt               # then a page and an API at http://127.0.0.1:8000
    python serve.py --out_dir out/char_rnn --port 8001   # char_rnn.py's checkpoints too
    curl -s localhost:8000/generate -d '{"prompt": "ROMEO:", "max_new_tokens": 200}'

It reads out_dir/ckpt.pt, sees which chapter wrote it (char_gpt.py or char_rnn.py), and imports that chapter's
load_model, generate_fast and sampling_settings: the model, its sampling loop and its CPU settings are the
chapter's own, so the server's text for a seed is the text `--sample_only` prints for that seed.
"""

import argparse
import collections
import importlib
import json
import math
import os
import signal
import sys
import threading

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


# -----------------------------------------------------------------------------
# 1. What a web API is
# -----------------------------------------------------------------------------
# A server waits on a port; a client (a browser, curl, a program) sends a request: a method (GET to read,
# POST to send data), a path, headers, and maybe a body; the server answers with a status code (200 OK,
# 400 the request is wrong, 404 no such path, 405 not with this method, 413 too large, ...), headers, and a
# body. http.server from the standard library speaks the protocol: for each request it calls our handler's
# do_GET, do_POST, ... (by the method's name), with the body to read from self.rfile and the answer to
# write to self.wfile. We write what each path answers:
#   GET  /          a page to try the model in a browser (assets/generate.html)
#   GET  /health    the model, as JSON
#   POST /generate  JSON in, {"prompt": "ROMEO:", "max_new_tokens": 200, ...}; JSON out, the new text
#                   (without the prompt) and the settings used. With "stream": true, the new characters
#                   themselves, as they are sampled.
# Streaming uses HTTP/1.1 chunked transfer encoding: the body goes out in pieces, each its length in hex,
# a line break, the bytes, a line break; an empty piece ends it. The browser's fetch() reads the pieces as
# they come. (Server-sent events, the other common way to stream, are read by EventSource, which can only
# GET, and our prompt travels in a POST body; fetch() could read them too, but chunks are simpler.)
# Each request is handled in its own Python thread (ThreadingHTTPServer), with its own random generator
# and its own key/value cache or hidden state. The model's weights are only read (the chapter's generate
# calls model.eval(), which sets a flag that is already set), so requests share nothing that changes.
# A client silent for SOCKET_TIMEOUT seconds (in the middle of sending, or between requests on a kept-
# alive connection) is dropped, so it cannot hold a thread for ever.

MAX_BODY = 64 * 1024  # bytes of a request body
MAX_NEW_TOKENS_SERVED = 5000
SOCKET_TIMEOUT = 30
REQUEST_FIELDS = {"prompt": (str,), "max_new_tokens": (int,), "temperature": (int, float),
                  "top_k": (int, type(None)), "seed": (int,), "stream": (bool,)}  # exact: in Python True is an int


class BadRequest(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def read_request(body, cfg, stoi):
    """The JSON body of POST /generate -> the settings to sample with, or BadRequest saying what to fix."""
    try:
        req = json.loads(body)
    except ValueError:
        raise BadRequest(400, 'the body is not JSON: send e.g. {"prompt": "ROMEO:"}') from None
    if not isinstance(req, dict):
        raise BadRequest(400, 'the body must be a JSON object, e.g. {"prompt": "ROMEO:"}')
    unknown = sorted(set(req) - set(REQUEST_FIELDS))
    if unknown:
        raise BadRequest(400, f"unknown field {', '.join(unknown)}: the fields are {', '.join(REQUEST_FIELDS)}")
    for name, value in req.items():
        if type(value) not in REQUEST_FIELDS[name]:
            kinds = " or ".join("null" if t is type(None) else t.__name__ for t in REQUEST_FIELDS[name])
            raise BadRequest(400, f"{name} must be {kinds}, not {json.dumps(value)}")
    settings = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_k": cfg.top_k,
                "seed": cfg.seed, "stream": False, **req}
    prompt, n = settings.get("prompt", ""), settings["max_new_tokens"]
    if not prompt:
        raise BadRequest(400, "prompt is missing or empty: give at least one character to continue")
    missing = sorted(set(prompt) - set(stoi))
    if missing:
        raise BadRequest(400, f"the prompt has characters the model never saw: {''.join(missing)!r}")
    if not 1 <= n <= MAX_NEW_TOKENS_SERVED:
        raise BadRequest(400, f"max_new_tokens={n}: ask for 1 to {MAX_NEW_TOKENS_SERVED}")
    if not 0 <= settings["temperature"] < math.inf:  # (JSON parsing lets NaN and Infinity through)
        raise BadRequest(400, f"temperature={settings['temperature']}: give a number from 0 up")
    if settings["top_k"] is not None and settings["top_k"] < 1:
        raise BadRequest(400, f"top_k={settings['top_k']}: give at least 1, or null for all characters")
    if not 0 <= settings["seed"] < 2**63:
        raise BadRequest(400, f"seed={settings['seed']}: give a whole number from 0 to 2**63 - 1")
    return settings


# -----------------------------------------------------------------------------
# 2. Taking turns
# -----------------------------------------------------------------------------
# Python runs one thread at a time: a thread must hold the interpreter's lock (the GIL) to run Python
# code. torch lets go of it inside each operation, so another thread can run Python meanwhile, but it must
# get it back after. Requests sampling at once in threads hand the GIL to each other at every operation,
# and each hand-over wakes a sleeping thread, which takes the operating system a few microseconds: as long
# as a small operation itself. char_gpt.py's step is ~60 small operations, and there two requests
# stepping at once make fewer characters per second together than one alone; char_rnn.py's step is a few
# larger operations (the fused cells do a layer's gates in one), and there two at once still gain (README,
# "Serving", has the load figures). So requests take turns at the model: STEPPERS[kind] at a time, in the
# order they came, TURN_CHARS characters a turn (a hand-over costs a wake-up; 8 characters, a few
# milliseconds, make that small while every client still sees text every few milliseconds). Between its
# turns a request sends the characters it has made, outside its turn, so a client slow to read holds up
# only its own request; one that asked for the whole text at once and hung up is noticed only when its
# answer is written. (Servers for many users go further and batch: one forward pass steps every waiting
# request at once, as B sequences.)

STEPPERS = {"char_gpt": 1, "char_rnn": 2}  # requests that may step the model at once, by chapter
TURN_CHARS = 8


class Turns:
    """At most n holders at once; the others queue, and each turn goes to the first in line. (A
    threading.Lock admits one and keeps no queue: when it is let go, whoever asks first gets it, and the
    thread that just let go usually asks again before a woken waiter is running. Measured without torch
    operations between, the lock changed hands once in 4,000 turns.)"""

    def __init__(self, n):
        self.guard = threading.Lock()  # held only while `free` and the queue change
        self.free = n
        self.queue = collections.deque()

    def begin(self):
        with self.guard:
            if self.free > 0:
                self.free -= 1
                return
            wake = threading.Lock()  # a lock of its own, taken at once, so that taking it again below
            wake.acquire()           # blocks until end() releases it for this thread
            self.queue.append(wake)
        wake.acquire()  # waits here until end() hands this thread the turn (any thread may release a
                        # Lock; if end() comes first, this returns at once: no turn is lost)

    def end(self):
        with self.guard:
            if self.queue:
                self.queue.popleft().release()  # the turn passes straight on; `free` stays as it is
            else:
                self.free += 1


# -----------------------------------------------------------------------------
# 3. A request: read and checked, sampled, answered
# -----------------------------------------------------------------------------

def complete(chapter, model, itos, stoi, settings, device, turns, on_text=None):
    """The text the model samples after the prompt; on_text(str) sees it piece by piece as it comes.
    The same settings and seed give the same text (and the same as --sample_only with that --seed)."""
    g = torch.Generator().manual_seed(settings["seed"])
    idx = torch.tensor([[stoi[c] for c in settings["prompt"]]], device=device)
    new, sent = [], 0

    def send():
        nonlocal sent
        if on_text and sent < len(new):
            on_text("".join(new[sent:]))
        sent = len(new)

    def on_char(ids):  # generate calls this after each character it draws, before the next step
        new.append(itos[ids.item()])
        if len(new) % TURN_CHARS == 0:  # the turn is over: the next in line steps while this one sends
            turns.end()
            try:
                send()  # a client that has gone makes this raise: the request ends, via complete's finally
            finally:
                turns.begin()
    turns.begin()  # the first turn also reads the prompt in
    try:
        chapter.generate_fast(model, idx, settings["max_new_tokens"], settings["temperature"], settings["top_k"],
                              on_token=on_char, generator=g)
    finally:
        turns.end()
    send()
    return "".join(new)


def make_handler(chapter, model, itos, device, cfg, about, turns):
    from http.server import BaseHTTPRequestHandler
    stoi = {c: i for i, c in enumerate(itos)}
    with open(os.path.join(HERE, "assets", "generate.html"), "rb") as f:
        page = f.read()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # for chunked streaming; a connection may then carry several requests
        timeout = SOCKET_TIMEOUT

        def do_GET(self):
            path = self.path.split("?")[0]  # the page reads its own ?prompt=... parameters
            if path == "/":
                self.answer(200, page, "text/html; charset=utf-8")
            elif path == "/health":
                self.answer_json(200, about)
            elif path == "/generate":
                self.not_allowed()
            else:
                self.answer_json(404, {"error": f"no such path {path}: try /, /health or POST /generate"})

        def do_POST(self):
            path = self.path.split("?")[0]
            if path in ("/", "/health"):
                return self.not_allowed()
            if path != "/generate":
                return self.answer_json(404, {"error": f"no such path {path}: POST goes to /generate"})
            try:
                size = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                size = -1
            if not 0 <= size <= MAX_BODY:
                # the body is left unread, so its bytes would be taken for the next request: hang up after
                self.close_connection = True
                if size < 0:
                    return self.answer_json(400, {"error": "Content-Length must be the body's size in bytes"})
                return self.answer_json(413, {"error": f"the body is {size:,} bytes; the limit is {MAX_BODY:,}"})
            try:
                settings = read_request(self.rfile.read(size), cfg, stoi)
            except BadRequest as e:
                return self.answer_json(e.status, {"error": str(e)})
            if settings["stream"]:
                return self.stream(settings)
            text = complete(chapter, model, itos, stoi, settings, device, turns)
            self.answer_json(200, {"text": text, "settings": settings})

        def not_allowed(self):
            self.answer_json(405, {"error": f"{self.command} {self.path} is not served: GET / or /health, "
                                            "POST /generate"})
        do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = do_TRACE = not_allowed

        def stream(self, settings):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def send(piece):  # one chunk: its length in hex, CRLF (a line break, "\r\n"), the bytes, CRLF.
                # A client that has gone makes this write fail (OSError): that ends the sampling, in handle()
                data = piece.encode("utf-8")
                self.wfile.write(b"%X\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
            complete(chapter, model, itos, stoi, settings, device, turns, on_text=send)
            self.wfile.write(b"0\r\n\r\n")  # the empty chunk ends the body

        def answer_json(self, status, obj):
            self.answer(status, json.dumps(obj, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8")

        def answer(self, status, body, content_type):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":  # an answer to HEAD is the headers alone
                self.wfile.write(body)

        def handle(self):
            try:
                super().handle()
            except OSError:  # the client went away, or stalled past SOCKET_TIMEOUT: stop serving it, quietly
                pass

        def log_message(self, format, *args):
            pass  # one line per request would drown the terminal; errors go to the client

    return Handler


# -----------------------------------------------------------------------------
# 4. Running it: the command line, loading the checkpoint, the server's life
# -----------------------------------------------------------------------------

class UsageError(Exception):
    """A problem with the flags or the checkpoint: reported as one line, without a traceback."""


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def parse_args(argv=None):
    p = OneLineParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default="out/char_gpt", help="the run to serve: OUT_DIR/ckpt.pt (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="listen here; 0.0.0.0 lets anyone on the network use the model (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="listen on this port, 0: any free one (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default: %(default)s)")
    # what a request leaves out; the same defaults as the chapters' own sampling flags
    p.add_argument("--max_new_tokens", type=int, default=500, help="characters per answer (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.8, help="divide the logits by this (default: %(default)s)")
    p.add_argument("--top_k", type=int, default=None, help="sample from the k most likely characters (default: all)")
    p.add_argument("--seed", type=int, default=1337, help="random seed of each answer (default: %(default)s)")
    cfg = p.parse_args(argv)
    if not 1 <= cfg.max_new_tokens <= MAX_NEW_TOKENS_SERVED or not 0 <= cfg.temperature < math.inf:
        raise UsageError(f"--max_new_tokens must be 1 to {MAX_NEW_TOKENS_SERVED}, --temperature at least 0")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise UsageError(f"--top_k={cfg.top_k} must be at least 1")
    if cfg.device != "cpu" and not (cfg.device.startswith("cuda") and torch.cuda.is_available()
                                    or cfg.device == "mps" and torch.backends.mps.is_available()):
        raise UsageError(f"--device={cfg.device} is not available here: use --device=cpu")
    return cfg


def load_chapter(out_dir):
    """(the chapter module that wrote out_dir/ckpt.pt, the checkpoint as that chapter reads it)."""
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.exists(path):
        raise UsageError(f"no checkpoint at {path}: train first (python char_gpt.py) or point --out_dir at a run")
    try:
        kind = torch.load(path, map_location="cpu", weights_only=True).get("kind")
    except Exception:
        kind = None
    if kind not in STEPPERS:  # not a checkpoint of ours, or damaged: char_gpt.py says which, in one line
        kind = "char_gpt"
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    chapter = importlib.import_module(kind)
    try:
        return chapter, chapter.load_checkpoint(path)
    except chapter.UsageError as e:
        raise UsageError(str(e)) from None


def serve(cfg):
    """The checkpoint behind a local HTTP API and page, until Ctrl-C."""
    from http.server import ThreadingHTTPServer
    chapter, ckpt = load_chapter(cfg.out_dir)
    try:
        model, itos = chapter.load_model(cfg.out_dir, cfg.device, ckpt=ckpt)
    except chapter.UsageError as e:
        raise UsageError(str(e)) from None
    if "iter" not in ckpt or "best_val_loss" not in ckpt:
        raise UsageError(f"{cfg.out_dir}/ckpt.pt lacks its iteration or val loss: not a training checkpoint")
    about = {"kind": ckpt["kind"], "parameters": sum(p.numel() for p in model.parameters()),
             "vocab_size": len(itos), "iters": ckpt["iter"],
             "val_loss": round(ckpt["best_val_loss"], 4)}
    handler = make_handler(chapter, model, itos, cfg.device, cfg, about, Turns(STEPPERS[ckpt["kind"]]))
    try:
        server = ThreadingHTTPServer((cfg.host, cfg.port), handler)
    except OSError as e:
        raise UsageError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror}): choose another --port") from None
    host, port = server.server_address[:2]  # (its threads are daemons: Ctrl-C does not wait for clients)
    if cfg.host not in ("127.0.0.1", "localhost"):
        print(f"warning: listening on {cfg.host}: anyone who can reach this machine can use the model")
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):  # both stop the server (even where a shell ignored SIGINT)
            signal.signal(sig, signal.default_int_handler)
        # the address only now: whoever reads it may stop the server at once, and that must be a clean stop
        print(f"serving {about['kind']} ({about['parameters']:,} parameters, vocabulary {about['vocab_size']}, "
              f"{about['iters']:,} iterations, val loss {about['val_loss']:.4f}) at http://{host}:{port}/ "
              "(Ctrl-C stops)", flush=True)
        # the chapter's sampling settings (threads by model size, no oneDNN), entered once for every
        # request: they are global to the process, so requests that each set and restored them would
        # undo one another's
        with chapter.sampling_settings(model):
            # and one thread per operation whatever the model's size: each request samples in a thread
            # of its own, and there a second thread makes every step slower, not faster (OpenMP spins
            # its waiting threads less once it manages more threads than there are cores; RESULTS.md,
            # "Serving", has the figures)
            torch.set_num_threads(1)
            server.serve_forever()
    except KeyboardInterrupt:
        print("stopped serving")
    finally:
        server.server_close()


def main(argv=None):
    serve(parse_args(argv))


if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
