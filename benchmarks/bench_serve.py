"""A load check of serve.py: N clients at once on localhost for a bounded time, every answer checked.

Run by hand (not a test: the numbers depend on the machine). It starts `python serve.py --out_dir OUT_DIR --port 0`
on a trained checkpoint (train one first: python char_gpt.py), then N threads each POST /generate in a loop
(the prompt "ROMEO:", --chars new characters, a different seed each time) for --seconds. Every answer must
be 200 with exactly --chars characters. Reported: requests/s, characters/s, and the median and slowest
request time. --screenshot PATH also saves the page (assets/generate.html) with a streamed sample, drawn
by headless Chromium (the picture in README).

    python benchmarks/bench_serve.py                              # out/char_gpt, 4 clients, 20 s
    python benchmarks/bench_serve.py --clients 1 8 --seconds 30
    python benchmarks/bench_serve.py --out_dir out/char_rnn
    python benchmarks/bench_serve.py --clients 4 --screenshot assets/serve.png
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def start(out_dir):
    proc = subprocess.Popen([sys.executable, "-u", str(REPO / "serve.py"), "--out_dir", out_dir, "--port", "0"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("serving"):
        raise SystemExit(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, line.split(" at ")[1].split()[0].rstrip("/"), line.strip()


def load(url, clients, seconds, chars):
    """clients threads asking in a loop until the time is up; returns (latencies, errors)."""
    latencies, errors, end = [], [], time.perf_counter() + seconds
    seeds = iter(range(10**9))
    lock = threading.Lock()

    def client():
        while time.perf_counter() < end:
            with lock:
                seed = next(seeds)
            body = json.dumps({"prompt": "ROMEO:", "max_new_tokens": chars, "seed": seed}).encode()
            req = urllib.request.Request(url + "/generate", data=body, method="POST")
            t = time.perf_counter()
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    problem = None if len(json.loads(r.read())["text"]) == chars else "wrong length"
            except OSError as e:  # an HTTP error status, a refused or dropped connection
                problem = repr(e)
            with lock:
                if problem:
                    errors.append(problem)
                else:
                    latencies.append(time.perf_counter() - t)
    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors, time.perf_counter() - t0


def screenshot(url, path):
    from browser import Browser
    b = Browser(width=1000, height=860)
    try:
        b.open(url + "/?prompt=ROMEO:&max_new_tokens=300&seed=1337&temperature=0.8&autorun=1")
        b.wait_for("document.body.dataset.done", timeout=120)
        b.screenshot(path)
    finally:
        b.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out_dir", default="out/char_gpt")
    p.add_argument("--clients", type=int, nargs="+", default=[4])
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--chars", type=int, default=200)
    p.add_argument("--screenshot", default=None)
    args = p.parse_args()
    proc, url, line = start(args.out_dir)
    try:
        print(line)
        print(f"os.cpu_count()={os.cpu_count()}, {args.chars} characters per request, {args.seconds:g} s per row")
        print(f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'chars/s':>8} {'median_s':>8} {'max_s':>6}")
        for n in args.clients:
            lat, errors, wall = load(url, n, args.seconds, args.chars)
            print(f"{n:7d} {len(lat):8d} {len(errors):6d} {len(lat) / wall:7.2f} {len(lat) * args.chars / wall:8.0f} "
                  f"{statistics.median(lat) if lat else float('nan'):8.2f} {max(lat, default=float('nan')):6.2f}",
                  flush=True)
            if errors:
                print("  first error:", errors[0])
        if args.screenshot:
            screenshot(url, args.screenshot)
            print("wrote", args.screenshot)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
