"""How big a text the training scripts take: seconds until training can start, and the peak memory.

Run by hand (not a test: the files are big and the numbers depend on the machine). For each size it
builds a text by repeating input.txt (or random Chinese characters, for a vocabulary of thousands) in a
scratch folder, never in the repo, then runs the script the way a user does,

    python char_gpt.py --input=BIG --max_iters=1 --eval_iters=1 --max_new_tokens=1 --device=cpu

under /usr/bin/time -v. Reported per run:
  ready_s   seconds from starting the process to its first line, which it prints once the text is read,
            encoded and split and the model is built: the moment training can start (torch's import
            included);
  total_s   the whole run: one evaluation, one step, a second evaluation, the checkpoint and the sample;
  peak_mb   the process's peak resident memory (maximum resident set size).

    python benchmarks/bench_big_text.py                       # 100 MB and 1 GB English, 20 MB Chinese
    python benchmarks/bench_big_text.py --sizes 100 --script char_rnn.py
    python benchmarks/bench_big_text.py --scratch /tmp/big    # where the texts go (several GB free)
"""

import argparse
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def english_text(path, megabytes):
    """input.txt repeated until the file holds `megabytes` MB."""
    base = (REPO / "input.txt").read_text(encoding="utf-8")
    reps = max(1, round(megabytes * 1e6 / len(base.encode("utf-8"))))
    if not path.exists() or path.stat().st_size != reps * len(base.encode("utf-8")):
        with open(path, "w", encoding="utf-8") as f:
            for _ in range(reps):
                f.write(base)
    return path


def chinese_text(path, megabytes, vocab=3000, seed=0):
    """Random characters from `vocab` CJK ideographs, 40 to a line: 3 bytes each in UTF-8."""
    if not path.exists():
        rng = random.Random(seed)
        alphabet = [chr(0x4E00 + i) for i in range(vocab)]
        line_count = int(megabytes * 1e6 / (40 * 3 + 1))
        with open(path, "w", encoding="utf-8") as f:
            for _ in range(line_count):
                f.write("".join(rng.choices(alphabet, k=40)) + "\n")
    return path


def measure(script, text, out_dir):
    cmd = ["/usr/bin/time", "-v", sys.executable, "-u", str(REPO / script), f"--input={text}",
           f"--out_dir={out_dir}", "--max_iters=1", "--eval_iters=1", "--max_new_tokens=1", "--device=cpu"]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    ready = time.perf_counter() - start
    out, err = proc.communicate()
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{script} failed on {text}:\n{err[-2000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1))
    return {"ready_s": ready, "total_s": total, "peak_mb": peak_kb / 1024, "first_line": first.strip()}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--script", default="char_gpt.py")
    p.add_argument("--sizes", type=float, nargs="+", default=[100, 1000], help="English texts, MB")
    p.add_argument("--chinese_mb", type=float, default=20, help="a Chinese text of this size (0: none)")
    p.add_argument("--scratch", default=None, help="folder for the texts (default: a temporary one)")
    args = p.parse_args()
    scratch = Path(args.scratch or tempfile.mkdtemp(prefix="bigtext_"))
    scratch.mkdir(parents=True, exist_ok=True)
    texts = [(f"{mb:g} MB English", english_text(scratch / f"english_{mb:g}mb.txt", mb)) for mb in args.sizes]
    if args.chinese_mb:
        texts.append((f"{args.chinese_mb:g} MB Chinese", chinese_text(scratch / f"chinese_{args.chinese_mb:g}mb.txt",
                                                                   args.chinese_mb)))
    print(f"{args.script}, texts in {scratch}")
    print(f"{'text':>18} {'ready_s':>8} {'total_s':>8} {'peak_mb':>8}  first line")
    for name, path in texts:
        r = measure(args.script, path, scratch / "out")
        print(f"{name:>18} {r['ready_s']:8.1f} {r['total_s']:8.1f} {r['peak_mb']:8.0f}  {r['first_line'][:90]}",
              flush=True)


if __name__ == "__main__":
    main()
