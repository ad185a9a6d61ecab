"""Sampling speed: char_gpt.py's cached `generate` against nanoGPT's `generate` (which re-runs the window for
every new character). Run by hand on a quiet machine (check `uptime` first); not a test.

  python benchmarks/bench_sampling.py --nanogpt DIR          # DIR: a nanoGPT checkout (its model.py is imported)
  python benchmarks/bench_sampling.py --nanogpt DIR --ours OTHER_CHECKOUT   # time another char_gpt.py, e.g. an
                                                             # older commit's, against the same nanoGPT
  python benchmarks/bench_sampling.py --settings_unchanged   # ours only, without sampling_settings() (threads
                                                             # by model size, oneDNN off) around the steps

Both models get the same shape and random weights of the same scale (seed 0), vocabulary 65, block_size 256,
no dropout; nanoGPT with bias=False, as ours. Each run continues a 256-character random prompt (one full
window) by 1,000 characters at temperature 1; rounds alternate ours / nanoGPT, and the table gives the median
of the rounds in characters per second. The two draw different characters (different weights); only the
speed is compared. Shapes: nanoGPT's shakespeare_char CPU recipe width (4 layers, 4 heads, 128) and its
"baby GPT" (6 layers, 6 heads, 384).
"""

import argparse
import importlib.util
import inspect
import platform
import re
import statistics
import subprocess
import time
from contextlib import nullcontext
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
SHAPES = [("4 layers, 4 heads, 128", dict(n_layer=4, n_head=4, n_embd=128)),
          ("6 layers, 6 heads, 384", dict(n_layer=6, n_head=6, n_embd=384))]
VOCAB, BLOCK = 65, 256


def import_file(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cpu_kind():
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16)\b", info)))
    model = re.search(r"model name\s*:\s*(.*)", info)
    name = model.group(1).strip() if model else platform.processor()
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        name = re.search(r"Model name:\s*(.*)", lscpu).group(1).strip()
    except (OSError, AttributeError):
        pass
    return f"{name}; {' '.join(flags) if flags else 'AVX2 (no avx512_bf16, no amx_bf16)'}"


def rate(fn, n):
    t = time.perf_counter()
    fn(n)
    return n / (time.perf_counter() - t)


def main(args):
    cg = import_file("char_gpt", Path(args.ours) / "char_gpt.py")
    nano = import_file("nanogpt_model", Path(args.nanogpt) / "model.py") if args.nanogpt else None
    print(f"CPU: {cpu_kind()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"ours: {Path(args.ours).resolve() / 'char_gpt.py'}{' (settings unchanged)' * args.settings_unchanged}; "
          f"nanoGPT: {Path(args.nanogpt).resolve() / 'model.py' if nano else '(not timed)'}")
    print(f"{args.new:,} new characters after a {BLOCK}-character prompt, temperature 1, median of {args.rounds} "
          "alternating rounds\n")
    # (an older char_gpt.py: sampling_settings() took no model; before it, only the thread count was set)
    settings = getattr(cg, "sampling_settings", None) or (lambda: cg.intra_op_threads(1))
    if not inspect.signature(settings).parameters:
        settings = (lambda f: lambda model: f())(settings)
    print("| model | ours chars/s | nanoGPT chars/s | ours / nanoGPT |\n|---|---|---|---|")
    for name, shape in SHAPES:
        torch.manual_seed(0)
        ours = cg.GPT(cg.Config(block_size=BLOCK, dropout=0.0, **shape), VOCAB).eval()
        if nano:
            torch.manual_seed(0)
            theirs = nano.GPT(nano.GPTConfig(block_size=BLOCK, vocab_size=VOCAB, dropout=0.0, bias=False,
                                             **shape)).eval()
        prompt = torch.randint(VOCAB, (1, BLOCK), generator=torch.Generator().manual_seed(1))

        def ours_run(n, m=ours, p=prompt):
            with nullcontext() if args.settings_unchanged else settings(m):  # as the command line samples
                return cg.generate(m, p, n, temperature=1.0, generator=torch.Generator().manual_seed(0))
        runs = {"ours": ours_run}
        if nano:
            runs["nanoGPT"] = lambda n, m=theirs, p=prompt: (torch.manual_seed(0), m.generate(p, n, temperature=1.0))
        for run in runs.values():
            run(20)                                          # warm-up
        rates = {who: [] for who in runs}
        for _ in range(args.rounds):                         # alternating: ours, nanoGPT, ours, ...
            for who, run in runs.items():
                rates[who].append(rate(run, args.new))
        a = statistics.median(rates["ours"])
        b = f"{statistics.median(rates['nanoGPT']):,.1f}" if nano else "-"
        ratio = f"{a / statistics.median(rates['nanoGPT']):.1f}x" if nano else "-"
        print(f"| {name} | {a:,.0f} | {b} | {ratio} |", flush=True)
        if args.verbose:
            print("   rounds:", {k: [round(r, 1) for r in v] for k, v in rates.items()})


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", help="a nanoGPT checkout: DIR/model.py has GPT and GPTConfig (without: ours only)")
    p.add_argument("--ours", default=str(REPO), help="the checkout whose char_gpt.py to time (default: this one)")
    p.add_argument("--new", type=int, default=1000, help="new characters per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--settings_unchanged", action="store_true",
                   help="run ours with torch's settings as they are (no sampling_settings() around the steps)")
    p.add_argument("--verbose", action="store_true", help="print every round")
    main(p.parse_args())
