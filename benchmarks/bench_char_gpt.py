"""Measure char_gpt.py against its targets. Run by hand on a quiet machine (check `top` first); not a test.

  python benchmarks/bench_char_gpt.py speed [--nanogpt DIR]   # tokens/s at nanoGPT's CPU recipe shape
  python benchmarks/bench_char_gpt.py quality [--seconds 180] [--nanogpt DIR --nanogpt_iters 4800]
                                  # val loss after a time budget, CPU defaults (more char_gpt.py flags may
                                  # follow); with --nanogpt, first the recipe for nanogpt_iters iterations
  python benchmarks/bench_char_gpt.py sampling                # KV cache vs recomputing the window
  python benchmarks/bench_char_gpt.py default                 # `python char_gpt.py` as a user runs it
  python benchmarks/bench_char_gpt.py matmul                  # float32 vs bfloat16 here, and what char_gpt chooses

--data is the text to train on (default: input.txt). With --nanogpt DIR, a nanoGPT checkout's train.py runs in
alternation with ours, on the text in DIR/data/shakespeare_char (train.bin, val.bin, meta.pkl: the first 90%
and last 10% of tiny shakespeare, the char-rnn benchmark text, as uint16 ids); --data must then be that same
text. Both programs' val losses are re-evaluated the same way: 200 random batches of 12 windows of their own
context length (seed 1337). To stand in for a CPU kind this machine is not, run under
ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 (AVX2 only), and check with
`matmul` that it took.
"""

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import char_gpt as cg  # noqa: E402

RECIPE = dict(batch_size=12, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)


def flags(d):
    return [f"--{k}={v}" for k, v in d.items()]


def run_ours(data, out_dir, extra):
    cmd = [sys.executable, str(REPO / "char_gpt.py"), f"--input={data}", f"--out_dir={out_dir}", "--device=cpu",
           "--max_new_tokens=1", *extra]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(proc.stderr)
    return proc.stdout


def speed(args):
    """Median ms/iter of training steps at the recipe shape, alternating: ours with AdamW (nanoGPT's optimizer,
    so the same work per step), ours with its default Muon, and (optionally) nanoGPT."""
    iters = 150
    times = {"char_gpt.py --optimizer=adamw": [], "char_gpt.py (default: Muon)": [], "nanoGPT": []}
    for r in range(args.rounds):
        for name, optimizer in [("char_gpt.py --optimizer=adamw", "adamw"), ("char_gpt.py (default: Muon)", "muon")]:
            out = run_ours(args.data, REPO / "out/bench/speed",
                           flags(RECIPE) + [f"--max_iters={iters}", "--eval_interval=100000", "--eval_iters=1",
                                            "--log_interval=10", "--learning_rate=1e-3", "--min_lr=1e-4",
                                            f"--optimizer={optimizer}"])
            per_interval = [float(m) for m in re.findall(r"\| ([\d.]+) ms/iter", out)][1:]  # skip the warm-up
            times[name].append(statistics.median(per_interval))
            print(f"round {r + 1}: {name} {times[name][-1]:.1f} ms/iter", flush=True)
        if args.nanogpt:
            cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
                   "--eval_iters=1", "--log_interval=1", f"--max_iters={iters}", f"--lr_decay_iters={iters}",
                   "--eval_interval=100000", "--out_dir=/tmp/nanogpt-bench"] + flags(RECIPE)
            proc = subprocess.run(cmd, cwd=args.nanogpt, capture_output=True, text=True)
            per_iter = [float(m) for m in re.findall(r"time ([\d.]+)ms", proc.stdout)][10:]  # skip the warm-up
            times["nanoGPT"].append(statistics.median(per_iter))
            print(f"round {r + 1}: nanoGPT {times['nanoGPT'][-1]:.1f} ms/iter", flush=True)
    tokens = RECIPE["batch_size"] * RECIPE["block_size"]
    base = statistics.median(times["nanoGPT"]) if times["nanoGPT"] else None
    print(f"\n| program | ms/iter (median of {args.rounds} rounds) | tokens/s | vs nanoGPT |\n|---|---|---|---|")
    for name, ts in times.items():
        if ts:
            ms = statistics.median(ts)
            print(f"| {name} | {ms:.1f} | {tokens / ms * 1000:,.0f} | {f'{base / ms:.2f}x' if base else '-'} |")


@torch.no_grad()
def reevaluate(out_dir, data, batches=200, batch_size=12, seed=1337):
    """Mean val loss of out_dir/ckpt.pt over `batches` random windows of the val split (as anchors.md does)."""
    model, itos = cg.load_model(out_dir)
    stoi = {c: i for i, c in enumerate(itos)}
    _, val = cg.split_data(cg.encode_text(cg.read_text(data), stoi))
    g = torch.Generator().manual_seed(seed)
    losses = [model(*cg.get_batch(val, batch_size, model.block_size, g))[1].item() for _ in range(batches)]
    return sum(losses) / len(losses)


# Run inside a nanoGPT checkout: mean val loss of its OUT_DIR/ckpt.pt over random batches, drawn as
# reevaluate() draws ours (200 batches of 12, seed 1337; its own context length).
NANOGPT_EVAL = """
import sys, numpy as np, torch
from model import GPT, GPTConfig
ck = torch.load(sys.argv[1] + '/ckpt.pt', map_location='cpu')
model = GPT(GPTConfig(**ck['model_args'])).eval()
model.load_state_dict({k.removeprefix('_orig_mod.'): v for k, v in ck['model'].items()})
T = ck['model_args']['block_size']
data = torch.from_numpy(np.fromfile('data/shakespeare_char/val.bin', dtype=np.uint16).astype(np.int64))
g = torch.Generator().manual_seed(1337)
losses = []
with torch.no_grad():
    for _ in range(200):
        ix = torch.randint(len(data) - T, (12,), generator=g)
        x = torch.stack([data[i:i + T] for i in ix]); y = torch.stack([data[i + 1:i + 1 + T] for i in ix])
        losses.append(model(x, y)[1].item())
print(f'{sum(losses) / len(losses):.4f}')
"""


def quality(args):
    if args.nanogpt:  # the recipe, its cosine decay fitted to --nanogpt_iters (choose them to fill the budget)
        n = args.nanogpt_iters
        cmd = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
               "--eval_iters=20", "--log_interval=100", f"--max_iters={n}", f"--lr_decay_iters={n}",
               f"--eval_interval={n}", "--out_dir=/tmp/nanogpt-quality"] + flags(RECIPE)
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=args.nanogpt, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
        # its training time: the median logged iteration (the first holds an evaluation) times the iterations
        iter_ms = [float(m) for m in re.findall(r"time ([\d.]+)ms", proc.stdout)][1:]
        trained = statistics.median(iter_ms) * n / 1000 if iter_ms else wall
        proc = subprocess.run([sys.executable, "-c", NANOGPT_EVAL, "/tmp/nanogpt-quality"], cwd=args.nanogpt,
                              capture_output=True, text=True, check=True)
        print(f"nanoGPT recipe, {n} iters: {trained:.0f}s of training, wall {wall:.0f}s; "
              f"val loss re-evaluated on 200 batches of 12 (seed 1337): {proc.stdout.strip()}", flush=True)
        args.seconds = round(trained)  # ours gets the same training time
    out_dir = REPO / "out/bench/quality"
    t = time.perf_counter()
    out = run_ours(args.data, out_dir, [f"--max_seconds={args.seconds}", *args.extra])
    wall = time.perf_counter() - t
    metrics = json.loads((out_dir / "metrics.json").read_text())
    print(out.splitlines()[0])
    print(f"budget {args.seconds}s, wall {wall:.0f}s, {metrics['iters']} iters, "
          f"{metrics['tokens_per_second']:,} tok/s, logged val {metrics['final_val_loss']:.4f}")
    print(f"val loss re-evaluated on 200 batches of 12 (seed 1337): {reevaluate(out_dir, args.data):.4f}")


@torch.no_grad()
def generate_naive(model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    """Sampling with no cache: every step re-runs the model on the last block_size characters."""
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -model.block_size:])
        idx = torch.cat([idx, cg.sample_next(logits[:, -1], temperature, top_k, generator)], dim=1)
    return idx


def sampling(args):
    """chars/s for 1,000 new characters at a 256-character window, with the cache and without."""
    print("| model | cached chars/s | recompute chars/s | speed-up |\n|---|---|---|---|")
    for name, shape in [("recipe width (4L/4H/128)", dict(n_layer=4, n_head=4, n_embd=128)),
                        ("baby GPT (6L/6H/384)", dict(n_layer=6, n_head=6, n_embd=384))]:
        torch.manual_seed(0)
        model = cg.GPT(cg.Config(block_size=256, dropout=0.0, **shape), 65).eval()
        prompt = torch.zeros(1, 1, dtype=torch.long)
        rates = []
        for gen in (cg.generate_fast, generate_naive):
            gen(model, prompt, 20, top_k=200, generator=torch.Generator().manual_seed(0))  # warm-up
            t = time.perf_counter()
            gen(model, prompt, 1000, temperature=0.8, top_k=200, generator=torch.Generator().manual_seed(0))
            rates.append(1000 / (time.perf_counter() - t))
        print(f"| {name} | {rates[0]:,.0f} | {rates[1]:,.0f} | {rates[0] / rates[1]:.1f}x |", flush=True)


def matmul(args):
    """GFLOP/s of a (768 x 128) @ (128 x 512) product, the MLP's shape at the recipe, in both formats."""
    a, b = torch.randn(768, 128), torch.randn(128, 512)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, ATen kernels: "
          f"{torch.backends.cpu.get_cpu_capability()}")
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        for _ in range(3):
            x @ y
        times = []
        for _ in range(7):
            t = time.perf_counter()
            for _ in range(5):
                x @ y
            times.append((time.perf_counter() - t) / 5)
        print(f"{str(dtype):15s} {2 * 768 * 128 * 512 / statistics.median(times) / 1e9:7.1f} GFLOP/s")
    native, why = cg.this_cpu_bf16()
    print(f"char_gpt.py chooses {'bfloat16' if native else 'float32'}: {why}")


def real_word_share(sample, text):
    """The share of the sample's words (runs of letters) that occur as words in the training text."""
    known = set(re.findall(r"[a-z]+", text.lower()))
    words = re.findall(r"[a-z]+", sample.lower())
    return sum(w in known for w in words) / max(len(words), 1), len(words)


def default(args):
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "char_gpt.py")], cwd=REPO, capture_output=True, text=True)
    print(proc.stdout[-2500:], proc.stderr[-2000:])
    print(f"`python char_gpt.py`: {time.perf_counter() - t:.0f} s wall, exit {proc.returncode}")
    sample = proc.stdout.split("--- sample ---", 1)[-1]
    share, n = real_word_share(sample, (REPO / "input.txt").read_text(encoding="utf-8"))
    print(f"real words in the sample: {share:.0%} of {n} (words that occur in input.txt)")
    print(f"val loss re-evaluated on 200 batches of 12: {reevaluate(REPO / 'out/char_gpt', REPO / 'input.txt'):.4f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["speed", "quality", "sampling", "default", "matmul"])
    p.add_argument("--data", help="the text to train on (default: input.txt); with --nanogpt, tiny shakespeare")
    p.add_argument("--nanogpt", help="a nanoGPT checkout to time beside ours (speed)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=180)
    p.add_argument("--nanogpt_iters", type=int, default=4800, help="quality: nanoGPT's iterations (fill --seconds)")
    args, args.extra = p.parse_known_args()  # any other flags go to char_gpt.py (quality), e.g. --n_layer=6
    if args.nanogpt and not args.data:
        p.error("--nanogpt needs --data=PATH: the tiny shakespeare text its data/shakespeare_char was made from")
    args.data = args.data or str(REPO / "input.txt")
    {"speed": speed, "quality": quality, "sampling": sampling, "default": default, "matmul": matmul}[args.what](args)
