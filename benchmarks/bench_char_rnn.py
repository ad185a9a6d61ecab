"""Measure char_rnn.py: training throughput of --impl scratch vs fused, and val loss per model at one budget.

Two parts, run by hand (not a test; the numbers depend on the machine and on what else it is running):

  speed    tokens/s of a full training step (forward, backward, clip, AdamW) for rnn, lstm and gru, with our
           cells (scratch) and with torch's fused kernel, at the CPU default sizes; median of --runs timings.
  quality  `python char_rnn.py --cell=M --max_seconds=S` for each cell on input.txt, in a subprocess the
           way a user runs it; reports best and final val loss, iterations and tokens/s from metrics.json.

    python benchmarks/bench_char_rnn.py speed                      # a minute or two
    python benchmarks/bench_char_rnn.py speed --threads 1          # steadier on a busy machine
    python benchmarks/bench_char_rnn.py quality --max_seconds 300  # 3 x 5 minutes
    python benchmarks/bench_char_rnn.py quality --max_seconds 60 --models lstm gru -- --n_embd=128
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import char_rnn  # noqa: E402


def time_steps(kind, impl, device, steps, runs, **sizes):
    """Tokens per second of `steps` training steps, median over `runs`, after one warm-up run."""
    cfg = char_rnn.fill_defaults(char_rnn.Config(cell=kind, impl=impl, max_iters=1, **sizes), device)
    torch.manual_seed(0)
    vocab = 67
    model = char_rnn.CharRNN(cfg, vocab).to(device)
    optimizers = char_rnn.make_optimizers(model, cfg)
    x = torch.randint(vocab, (cfg.batch_size, cfg.block_size + 1), device=device)
    rates = []
    for run in range(runs + 1):
        hidden = None
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            _, hidden = char_rnn.train_step(model, optimizers, x[:, :-1], x[:, 1:], hidden, cfg.learning_rate,
                                            cfg.grad_clip)
            hidden = char_rnn.detach_hidden(hidden)
        if device == "cuda":
            torch.cuda.synchronize()
        if run > 0:  # the first run warms up allocators and kernels
            rates.append(steps * cfg.batch_size * cfg.block_size / (time.perf_counter() - t0))
    return statistics.median(rates), cfg


def speed(args):
    device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads")
    print(f"{'model':6} {'scratch tok/s':>14} {'fused tok/s':>12} {'fused/scratch':>14}")
    for kind in args.models:
        scratch, cfg = time_steps(kind, "scratch", device, args.steps, args.runs)
        fused, _ = time_steps(kind, "fused", device, args.steps, args.runs)
        print(f"{kind:6} {scratch:14,.0f} {fused:12,.0f} {fused / scratch:13.2f}x")
    print(f"sizes: batch_size {cfg.batch_size}, block_size {cfg.block_size}, n_layer {cfg.n_layer}, "
          f"n_embd {cfg.n_embd}")


def quality(args):
    print(f"{'model':6} {'best val':>9} {'final val':>10} {'iters':>7} {'tok/s':>8} {'params':>10} {'wall s':>7}")
    for kind in args.models:
        with tempfile.TemporaryDirectory() as out:
            cmd = [sys.executable, str(REPO / "char_rnn.py"), f"--cell={kind}", f"--max_seconds={args.max_seconds}",
                   f"--out_dir={out}", "--max_new_tokens=200", *args.extra]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"{kind}: failed: {proc.stderr.strip()}")
                continue
            m = json.loads((Path(out) / "metrics.json").read_text())
            print(f"{kind:6} {m['best_val_loss']:9.4f} {m['final_val_loss']:10.4f} {m['iters']:7} "
                  f"{m['tokens_per_second']:8,} {m['params']:10,} {wall:7.0f}")
            if args.show_samples:
                print(proc.stdout.split("--- sample ---\n")[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["speed", "quality"])
    parser.add_argument("--models", nargs="+", default=list(char_rnn.CELLS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=10, help="speed: training steps per timing")
    parser.add_argument("--runs", type=int, default=3, help="speed: timings per configuration (median)")
    parser.add_argument("--threads", type=int, help="speed: torch threads (default: torch's choice)")
    parser.add_argument("--max_seconds", type=float, default=300, help="quality: training budget per model")
    parser.add_argument("--show_samples", action="store_true", help="quality: print each model's sample")
    parser.add_argument("extra", nargs="*", help="quality: more char_rnn.py flags, after --")
    args = parser.parse_args()
    speed(args) if args.part == "speed" else quality(args)


if __name__ == "__main__":
    main()
