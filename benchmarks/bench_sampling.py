"""Sampling speed: char_gpt.py's cached `generate` against nanoGPT's `generate` (which re-runs the window for
every new character). Run by hand on a quiet machine (check `uptime` first); not a test.

  python benchmarks/bench_sampling.py --nanogpt DIR          # DIR: a nanoGPT checkout (its model.py is imported)
  python benchmarks/bench_sampling.py --nanogpt DIR --ours OTHER_CHECKOUT   # time another char_gpt.py, e.g. an
                                                             # older commit's, against the same nanoGPT
  python benchmarks/bench_sampling.py --threads              # ours only: 1 vs 2 intra-op threads by model size
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
import os
import platform
import re
import statistics
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
    """The CPU's name and which of the three kinds it is (or stands in for, under ONEDNN_MAX_CPU_ISA)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", info)
    name = model.group(1).strip() if model else platform.processor()
    flags = set(re.findall(r"\b(avx512f|avx512_bf16|amx_bf16)\b", info))
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "")
    kind = ("AVX512-BF16/AMX" if flags & {"avx512_bf16", "amx_bf16"} else
            "AVX-512 without bfloat16" if "avx512f" in flags else "AVX2 only")
    return f"{name}; {kind}" + (f"; ONEDNN_MAX_CPU_ISA={cap}, ATEN_CPU_CAPABILITY="
                                f"{os.environ.get('ATEN_CPU_CAPABILITY', '')}" if cap else "")


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
    generate = getattr(cg, "generate_fast", cg.generate)  # what the command line samples with
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
                return generate(m, p, n, temperature=1.0, generator=torch.Generator().manual_seed(0))
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


def threads(args):
    """Characters/s of generate under sampling_settings with 1 and with 2 intra-op threads, for models from
    0.1 M to 25 M parameters (char_gpt.py) and two LSTMs (char_rnn.py): where a second thread starts to pay."""
    cg = import_file("char_gpt", Path(args.ours) / "char_gpt.py")
    cr = import_file("char_rnn", Path(args.ours) / "char_rnn.py")
    print(f"CPU: {cpu_kind()}; torch {torch.__version__}; {args.new:,} characters after a full window, "
          f"median of {args.rounds}\n")
    print("| model | parameters | 1 thread | 2 threads |\n|---|---|---|---|")
    models = []
    for n_layer, n_head, n_embd in [(2, 2, 64), (3, 4, 96), (4, 4, 128), (6, 8, 256), (6, 6, 384), (8, 8, 512)]:
        torch.manual_seed(0)
        m = cg.GPT(cg.Config(block_size=BLOCK, dropout=0.0, n_layer=n_layer, n_head=n_head, n_embd=n_embd), VOCAB)
        models.append((f"char_gpt {n_layer} layers, {n_embd} wide", cg, m.eval(), BLOCK))
    for n_layer, n_embd in [(1, 256), (3, 512)]:
        torch.manual_seed(0)
        m = cr.CharRNN(cr.Config(cell="lstm", impl="fused", n_layer=n_layer, n_embd=n_embd, dropout=0.0,
                                 block_size=64), VOCAB)
        models.append((f"char_rnn LSTM, {n_layer} x {n_embd}", cr, m.eval(), 64))
    for name, module, model, window in models:
        prompt = torch.randint(VOCAB, (1, window), generator=torch.Generator().manual_seed(1))
        rates = {1: [], 2: []}
        for _ in range(args.rounds):
            for n in (1, 2):
                with module.sampling_settings(model):
                    torch.set_num_threads(n)
                    module.generate_fast(model, prompt, 10, generator=torch.Generator().manual_seed(0))  # warm-up
                    t = time.perf_counter()
                    module.generate_fast(model, prompt, args.new, generator=torch.Generator().manual_seed(0))
                    rates[n].append(args.new / (time.perf_counter() - t))
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params / 1e6:.2f} M | {statistics.median(rates[1]):,.0f} | "
              f"{statistics.median(rates[2]):,.0f} |", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nanogpt", help="a nanoGPT checkout: DIR/model.py has GPT and GPTConfig (without: ours only)")
    p.add_argument("--ours", default=str(REPO), help="the checkout whose char_gpt.py to time (default: this one)")
    p.add_argument("--new", type=int, default=1000, help="new characters per run")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--settings_unchanged", action="store_true",
                   help="run ours with torch's settings as they are (no sampling_settings() around the steps)")
    p.add_argument("--verbose", action="store_true", help="print every round")
    p.add_argument("--threads", action="store_true", help="ours only: 1 vs 2 threads over model sizes")
    args = p.parse_args()
    threads(args) if args.threads else main(args)
