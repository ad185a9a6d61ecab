"""The command line of char_rnn.py and char_gpt.py: the same flags, outputs and errors, tested on both.

Every test here runs the real script in a subprocess, the way a user does, with a tiny model.
"""

import argparse
import contextlib
import csv
import io
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO, SMALL_TEXT, assert_one_line_error, run

SCRIPTS = [s for s in ("char_gpt.py", "char_rnn.py") if (REPO / s).exists()]
TINY = {
    "char_gpt.py": ["--n_layer", 1, "--n_head", 2, "--n_embd", 16, "--block_size", 16, "--batch_size", 4],
    "char_rnn.py": ["--n_layer", 1, "--n_embd", 16, "--block_size", 16, "--batch_size", 4],
}
KIND = {"char_gpt.py": "char_gpt", "char_rnn.py": "char_rnn"}


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(SMALL_TEXT, encoding="utf-8")
    return path


def train(script, tmp_path, text_file, *args):
    return run(script, "--input", text_file, "--out_dir", tmp_path / "out", "--eval_iters", 2,
               "--log_interval", 5, *TINY[script], *args)


# main(argv) in this process: the same UsageError the script prints as "error: ..." with exit code 2 (the
# two tests that run the script itself, test_too_old_a_torch_is_one_line and test_unknown_flag, cover
# that wrapper), without starting Python and torch once per test.

def main(script, *args):
    """Run the script's main(argv) here; returns what a CompletedProcess would hold."""
    module = __import__(KIND[script])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            module.main([str(a) for a in args])
            code, err = 0, ""
        except module.UsageError as e:
            code, err = 2, f"error: {e}\n"
    return subprocess.CompletedProcess(args, code, out.getvalue(), err)


def train_main(script, tmp_path, text_file, *args):
    return main(script, "--input", text_file, "--out_dir", tmp_path / "out", "--eval_iters", 2, "--log_interval", 5,
                "--device", "cpu", *TINY[script], *args)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny run of each script (2 iterations on SMALL_TEXT), trained once: copy_of_trained gives a test
    its own copy to change."""
    made = {}

    def get(script):
        if script not in made:
            d = tmp_path_factory.mktemp(KIND[script])
            (d / "text.txt").write_text(SMALL_TEXT, encoding="utf-8")
            proc = train_main(script, d, d / "text.txt", "--max_iters", 2, "--max_new_tokens", 1)
            assert proc.returncode == 0, proc.stderr
            made[script] = d / "out"
        return made[script]
    return get


def copy_of_trained(trained, script, tmp_path):
    shutil.copytree(trained(script), tmp_path / "out")
    return tmp_path / "out"


# ---------------------------------------------------------------- a whole run, end to end

@pytest.mark.parametrize("script", SCRIPTS)
def test_twenty_iterations_then_a_sample(script, tmp_path, text_file):
    proc = train(script, tmp_path, text_file, "--max_iters", 20, "--eval_interval", 10,
                 "--max_new_tokens", 50, "--prompt", "ROMEO:")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    assert {"ckpt.pt", "log.csv", "metrics.json", "loss.png"} <= {p.name for p in out.iterdir()}
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert list(rows[0]) == ["iter", "train_loss", "val_loss", "elapsed_s", "tokens_per_s", "train_bpc", "val_bpc"]
    assert [int(r["iter"]) for r in rows] == [0, 10, 20]
    for r in rows:  # bits per character = nats / ln 2
        assert float(r["val_bpc"]) == pytest.approx(float(r["val_loss"]) / math.log(2), abs=2e-4)
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])  # it learned something
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("best_val_loss", "final_val_loss", "iters", "train_seconds", "tokens_per_second", "params"):
        assert key in metrics
    assert metrics["best_val_bpc"] == pytest.approx(metrics["best_val_loss"] / math.log(2), abs=1e-4)
    assert "bpc)" in proc.stdout
    assert metrics["iters"] == 20 and metrics["final_val_loss"] == float(rows[-1]["val_loss"])
    assert "ms/iter" in proc.stdout and "tok/s" in proc.stdout and "val loss" in proc.stdout
    sample = proc.stdout.split("--- sample ---\n")[1]
    assert sample.startswith("ROMEO:") and len(sample.rstrip("\n")) >= len("ROMEO:") + 50 - 5
    lines = proc.stdout.splitlines()                          # each evaluation: its losses, then a sample line
    evals = [i for i, line in enumerate(lines) if line.startswith("eval iter")]
    assert len(evals) == 3 and all(lines[i + 1].startswith("  sample: ") for i in evals)
    assert all(len(lines[i + 1]) >= len("  sample: ") + 70 for i in evals)


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_evaluation_samples_are_seeded_and_can_be_turned_off(script, tmp_path, text_file):
    on = [line for line in train_main(script, tmp_path / "a", text_file, "--max_iters", 4, "--eval_interval", 2,
                                      "--max_new_tokens", 1).stdout.splitlines() if line.startswith("  sample: ")]
    again = [line for line in train_main(script, tmp_path / "b", text_file, "--max_iters", 4, "--eval_interval", 2,
                                         "--max_new_tokens", 1).stdout.splitlines() if line.startswith("  sample: ")]
    off = train_main(script, tmp_path / "c", text_file, "--max_iters", 4, "--eval_interval", 2, "--max_new_tokens",
                     1, "--eval_sample=false").stdout
    assert len(on) == 3 and on == again and "  sample: " not in off
    assert losses(tmp_path / "a" / "out") == losses(tmp_path / "c" / "out")  # sampling left training alone


@pytest.mark.parametrize("script", SCRIPTS)
def test_sample_only_streams_from_the_checkpoint(script, tmp_path, text_file):
    assert train(script, tmp_path, text_file, "--max_iters", 5, "--max_new_tokens", 1).returncode == 0
    proc = run(script, "--sample_only", "--out_dir", tmp_path / "out", "--num_samples", 2,
               "--max_new_tokens", 30, "--prompt", "the ", "--top_k", 5, "--temperature", 0.5)
    assert proc.returncode == 0, proc.stderr
    samples = proc.stdout.split("--- sample ")[1:]
    assert len(samples) == 2 and all(s.split("\n", 1)[1].startswith("the ") for s in samples)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_documents_every_flag_with_its_default(script):
    proc = run(script, "--help")
    assert proc.returncode == 0
    for flag in ("--input", "--out_dir", "--device", "--seed", "--max_iters", "--max_seconds", "--eval_interval",
                 "--eval_iters", "--batch_size", "--block_size", "--n_layer", "--n_embd", "--dropout",
                 "--learning_rate", "--weight_decay", "--grad_clip", "--resume", "--sample_only", "--prompt",
                 "--max_new_tokens", "--num_samples", "--temperature", "--top_k", "--min_lr", "--warmup_iters",
                 "--log_interval", "--optimizer"):
        assert flag in proc.stdout, flag
    assert proc.stdout.count("(default:") >= 20


@pytest.mark.parametrize("script", SCRIPTS)
def test_flags_take_both_spellings(script, tmp_path, text_file):
    a = train(script, tmp_path / "a", text_file, "--max_iters=5", "--seed=3", "--max_new_tokens=20")
    b = train(script, tmp_path / "b", text_file, "--max_iters", "5", "--seed", "3", "--max_new_tokens", "20")
    assert a.returncode == b.returncode == 0
    assert a.stdout.split("--- sample ---")[1] == b.stdout.split("--- sample ---")[1]


# ---------------------------------------------------------------- resume and Ctrl-C

OPTIMIZERS = {"char_gpt.py": ["muon", "adamw"], "char_rnn.py": ["adamw"]}  # Muon is char_gpt.py's lesson


def start(script, tmp_path, text_file, *args):
    """The script in the background, the way a user starts it in a terminal; stdout is read line by line."""
    cmd = [sys.executable, "-u", str(REPO / script), "--input", text_file, "--out_dir", tmp_path / "out",
           "--log_interval", 5, *TINY[script], *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # two threads on a busy machine can crawl
    return subprocess.Popen(list(map(str, cmd)), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def wait_for(proc, prefix):
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the run ended before printing {prefix!r}: {proc.stderr.read()}")


def losses(out_dir):
    return [(r["iter"], r["train_loss"], r["val_loss"]) for r in csv.DictReader((out_dir / "log.csv").open())]


@pytest.mark.parametrize("script", SCRIPTS)
def test_ctrl_c_finishes_the_step_and_resuming_gives_the_same_losses(script, tmp_path, text_file):
    """A cosine schedule over a fixed --max_iters: stopped by Ctrl-C, then resumed with the same flags,
    the run logs the same losses as one never stopped (the same learning-rate curve, the same batches)."""
    flags = ["--max_iters", 120, "--eval_interval", 40, "--eval_iters", 2, "--warmup_iters", 10,
             "--max_new_tokens", 1, "--device", "cpu"]
    assert train(script, tmp_path / "straight", text_file, *flags).returncode == 0
    proc = start(script, tmp_path / "parts", text_file, *flags)
    wait_for(proc, "iter 50 ")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    stopped = [line for line in out.splitlines() if line.startswith("stopped at iteration")]
    assert len(stopped) == 1 and "continue with --resume" in stopped[0], out
    ckpt = torch.load(tmp_path / "parts" / "out" / "ckpt.pt", weights_only=True)
    assert 50 <= ckpt["iter"] < 120 and ckpt["kind"] == KIND[script]
    assert len(losses(tmp_path / "parts" / "out")) >= 2  # the log was written as the run went

    proc = train(script, tmp_path / "parts", text_file, *flags, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert losses(tmp_path / "parts" / "out") == losses(tmp_path / "straight" / "out")
    assert [r[0] for r in losses(tmp_path / "straight" / "out")] == ["0", "40", "80", "120"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_sigterm_stops_gracefully_too(script, tmp_path, text_file):
    proc = start(script, tmp_path, text_file, "--max_iters", 100000, "--eval_interval", 100000)
    wait_for(proc, "iter 10 ")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "checkpoint saved" in out
    assert torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["iter"] >= 10


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_run_killed_outright_leaves_its_log(script, tmp_path, text_file):
    """kill -9 gives the program no chance to write anything: the log must already be on disk."""
    proc = start(script, tmp_path, text_file, "--max_iters", 100000, "--eval_interval", 10, "--eval_iters", 1)
    wait_for(proc, "iter 25 ")  # printed after evaluation 20 was logged
    proc.kill()
    proc.communicate(timeout=60)
    rows = losses(tmp_path / "out")
    assert [r[0] for r in rows[:3]] == ["0", "10", "20"]
    assert (tmp_path / "out" / "loss.png").stat().st_size > 1000


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(script, tmp_path, text_file):
    """Two real SIGINTs while an evaluation runs (a long one: thousands of batches): the first asks to stop after
    the step, the second stops at once. Exit 130, and the checkpoint on disk is byte for byte the one the
    evaluation before wrote: nothing is saved from the middle of a step."""
    big = tmp_path / "big.txt"                  # a val split of 100,000 characters: room for a long evaluation
    big.write_text(SMALL_TEXT * 50, encoding="utf-8")
    proc = start(script, tmp_path, big, "--max_iters", 100000, "--eval_interval", 10, "--eval_iters", 3000,
                 "--n_embd", 256)
    wait_for(proc, "iter 10 ")                  # printed right before evaluation 10 starts (seconds long)
    before = (tmp_path / "out" / "ckpt.pt").read_bytes()   # evaluation 0's
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "stopped at once at iteration 10" in out and "eval iter 10" not in out, out
    assert (tmp_path / "out" / "ckpt.pt").read_bytes() == before
    assert torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)["iter"] == 0


def tiny_config(module, script, out_dir, text_file, **kw):
    base = dict(input=str(text_file), out_dir=str(out_dir), n_layer=1, n_embd=16, block_size=16, batch_size=4,
                eval_iters=2, log_interval=5, device="cpu", seed=3, dropout=0.1, warmup_iters=0,
                learning_rate=3e-3, min_lr=3e-3, eval_interval=10)
    if script == "char_gpt.py":
        base["n_head"] = 2
    return module.Config(**(base | kw))


def assert_same(a, b, where="checkpoint"):
    """Equal, bit for bit: tensors by torch.equal, containers item by item."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, (where, a, b)


@pytest.mark.parametrize("script, optimizer", [(s, o) for s in SCRIPTS for o in OPTIMIZERS[s]])
def test_resume_continues_bit_for_bit(script, optimizer, tmp_path, text_file):
    """20 iterations, then --resume to 30, then to 40, ends with the checkpoint of 40 straight: the same
    weights, optimizer states (moments, step counts, Muon's momentum), random-number states and data
    positions, bit for bit, and the same losses logged. A flat learning rate, so both share one schedule."""
    module = __import__(KIND[script])
    module.run(tiny_config(module, script, tmp_path / "straight", text_file, max_iters=40,
                             optimizer=optimizer), quiet=True)
    parts = tmp_path / "parts"
    module.run(tiny_config(module, script, parts, text_file, max_iters=20, optimizer=optimizer), quiet=True)
    for budget in (30, 40):
        module.run(tiny_config(module, script, parts, text_file, max_iters=budget, resume=True), quiet=True)
    straight = torch.load(tmp_path / "straight" / "ckpt.pt", weights_only=True)
    resumed = torch.load(parts / "ckpt.pt", weights_only=True)
    assert straight["iter"] == resumed["iter"] == 40
    assert [r[:3] for r in straight.pop("history")] == [r[:3] for r in resumed.pop("history")]  # iter, losses
    for key in ("config", "train_seconds"):                  # the budget flags and the clock: not the state
        del straight[key], resumed[key]
    assert_same(straight, resumed)


# ---------------------------------------------------------------- evaluating a checkpoint

@pytest.mark.parametrize("script", SCRIPTS)
def test_eval_only_reports_nats_bits_and_perplexity(script, tmp_path, text_file):
    assert train(script, tmp_path, text_file, "--max_iters", 20, "--max_new_tokens", 1).returncode == 0
    proc = run(script, "--eval_only", "--input", text_file, "--out_dir", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    nats, bits, ppl = (float(line.split(word)[0].split()[-1].rstrip(",")) for word in
                       (" nats/char", " bits/char", ", over"))
    assert bits == pytest.approx(nats / math.log(2), abs=2e-4) and ppl == pytest.approx(math.exp(nats), rel=1e-3)
    assert f"over {len(SMALL_TEXT) - int(0.9 * len(SMALL_TEXT)) - 1:,} characters" in line
    again = run(script, "--eval_only", "--input", text_file, "--out_dir", tmp_path / "out")
    assert again.stdout == proc.stdout  # no random batches: the same number every time

    other = tmp_path / "other.txt"  # another text with the same characters
    other.write_text(SMALL_TEXT[::-1], encoding="utf-8")
    proc = run(script, "--eval_only", "--input", other, "--out_dir", tmp_path / "out")
    assert proc.returncode == 0 and "nats/char" in proc.stdout, proc.stderr
    other.write_text(SMALL_TEXT + "\u00e9~", encoding="utf-8")
    assert_one_line_error(run(script, "--eval_only", "--input", other, "--out_dir", tmp_path / "out"),
                          "\u00e9", "~", "lacks")


@pytest.mark.parametrize("script", SCRIPTS)
def test_eval_only_and_sample_only_exclude_each_other(script, tmp_path):
    assert_one_line_error(main(script, "--eval_only", "--sample_only", "--out_dir", tmp_path), "--eval_only")


# ---------------------------------------------------------------- bad input: one line, no traceback

@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", ["--eval_interval=0", "--eval_iters=0", "--log_interval=-1", "--max_seconds=0",
                                  "--num_samples=0", "--device=cuda"])
def test_nonsense_flags_of_every_kind(script, flag, tmp_path, text_file):
    name = flag.split("=")[0]
    if flag == "--device=cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is here")
    assert_one_line_error(train_main(script, tmp_path, text_file, "--max_iters", 5, flag), name)


def test_heads_must_divide_the_width(tmp_path, text_file):
    proc = main("char_gpt.py", "--input", text_file, "--out_dir", tmp_path, "--n_embd=30", "--n_head=4")
    assert_one_line_error(proc, "--n_embd=30", "--n_head=4")


def test_unknown_dtype(tmp_path, text_file):
    assert_one_line_error(main("char_gpt.py", "--input", text_file, "--out_dir", tmp_path, "--dtype=bogus"),
                          "--dtype=bogus", "float32")


@pytest.mark.parametrize("script", SCRIPTS)
def test_input_is_a_directory(script, tmp_path):
    assert_one_line_error(main(script, "--input", tmp_path, "--out_dir", tmp_path / "out"), str(tmp_path))


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_checkpoint_save_that_fails_halfway_leaves_the_last_one_whole(script, tmp_path, monkeypatch):
    module = __import__(KIND[script])
    path = str(tmp_path / "ckpt.pt")
    first = {"kind": KIND[script], "config": {}, "itos": ["a"], "model": {"w": torch.ones(3)}, "iter": 1}
    module.write_atomically(path, lambda f: torch.save(first, f), "wb")

    def dies_halfway(state, f):              # writes some bytes, then the disk fills (or the power goes)
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(module.torch, "save", dies_halfway)
    with pytest.raises(OSError):
        module.write_atomically(path, lambda f: module.torch.save({**first, "iter": 2}, f), "wb")
    monkeypatch.undo()
    assert_same(module.load_checkpoint(path), first)


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_checkpoint_holding_an_object_is_refused_in_one_line(script, tmp_path):
    torch.save({"kind": KIND[script], "config": {}, "itos": ["a"], "model": {}, "iter": 0,
                "note": argparse.Namespace(x=1)}, tmp_path / "ckpt.pt")   # any class: weights_only refuses it
    assert_one_line_error(main(script, "--sample_only", "--out_dir", tmp_path), "Python objects", "refused")


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("damage", ["a key", "a weight"])
def test_a_checkpoint_of_the_right_kind_with_something_missing(script, damage, tmp_path, text_file, trained):
    copy_of_trained(trained, script, tmp_path)
    path = tmp_path / "out" / "ckpt.pt"
    ckpt = torch.load(path, weights_only=True)
    if damage == "a key":
        del ckpt["itos"]
    else:
        ckpt["model"].popitem()
    torch.save(ckpt, path)
    assert_one_line_error(main(script, "--sample_only", "--out_dir", tmp_path / "out"),
                          "itos" if damage == "a key" else "train again")

@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_input(script, tmp_path):
    assert_one_line_error(main(script, "--input", tmp_path / "nope.txt"), "nope.txt", "not found")


@pytest.mark.parametrize("script", SCRIPTS)
def test_empty_input(script, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert_one_line_error(main(script, "--input", tmp_path / "empty.txt", "--out_dir", tmp_path), "empty")


@pytest.mark.parametrize("script", SCRIPTS)
def test_input_not_utf8(script, tmp_path):
    (tmp_path / "latin1.txt").write_bytes("Fran\xe7ais, d\xe9j\xe0 vu\n".encode("latin-1") * 100)
    assert_one_line_error(main(script, "--input", tmp_path / "latin1.txt", "--out_dir", tmp_path), "UTF-8")


@pytest.mark.parametrize("script", SCRIPTS)
def test_input_of_only_whitespace(script, tmp_path):
    (tmp_path / "blank.txt").write_text(" \n\t\n" * 5000)
    assert_one_line_error(main(script, "--input", tmp_path / "blank.txt", "--out_dir", tmp_path), "whitespace")


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_five_character_file_is_too_short_whatever_the_prompt(script, tmp_path):
    (tmp_path / "tiny.txt").write_text("abcde")  # no newline, the default prompt: "too short" comes first
    assert_one_line_error(main(script, "--input", tmp_path / "tiny.txt", "--out_dir", tmp_path), "too short")


@pytest.mark.parametrize("script", SCRIPTS)
def test_input_too_short(script, tmp_path):
    (tmp_path / "short.txt").write_text("To be, or not to be.\n")
    proc = main(script, "--input", tmp_path / "short.txt", "--out_dir", tmp_path, *TINY[script])
    assert_one_line_error(proc, "too short", "--block_size")


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", ["--batch_size=0", "--n_layer=-1", "--block_size=0", "--dropout=1.5",
                                  "--max_iters=0", "--learning_rate=0", "--min_lr=-1"])
def test_nonsense_sizes(script, flag, tmp_path, text_file):
    name = flag.split("=")[0]
    assert_one_line_error(main(script, "--input", text_file, "--out_dir", tmp_path, flag), name)


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_optimizer(script, tmp_path, text_file):
    proc = main(script, "--input", text_file, "--out_dir", tmp_path, "--optimizer=sgd")
    assert_one_line_error(proc, "--optimizer=sgd", " or ".join(OPTIMIZERS[script]) if script == "char_gpt.py"
                          else "adamw only")


def test_char_rnn_has_no_muon(tmp_path, text_file):
    proc = main("char_rnn.py", "--input", text_file, "--out_dir", tmp_path, "--optimizer=muon")
    assert_one_line_error(proc, "--optimizer=muon", "adamw only", "char_gpt.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_too_old_a_torch_is_one_line(script, tmp_path):
    """With torch 2.3 the scripts say which version they need, and stop."""
    fake_old = ("import runpy, sys, torch; torch.__version__ = '2.3.1'; sys.argv = [sys.argv[1]]; "
                "runpy.run_path(sys.argv[0], run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", fake_old, str(REPO / script)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert_one_line_error(proc, "torch >= 2.4", "2.3.1", "pip install")


@pytest.mark.parametrize("script", SCRIPTS)
def test_resuming_a_checkpoint_from_before_muon(script, tmp_path, text_file, trained):
    copy_of_trained(trained, script, tmp_path)
    path = tmp_path / "out" / "ckpt.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["optimizer"] = ckpt.pop("optimizers")[-1]  # the old layout: one AdamW state, no config["optimizer"]
    del ckpt["config"]["optimizer"]
    torch.save(ckpt, path)
    proc = train_main(script, tmp_path, text_file, "--max_iters", 4, "--resume")
    assert_one_line_error(proc, f"older {script}", "another --out_dir")
    proc = run(script, "--sample_only", "--out_dir", tmp_path / "out", "--max_new_tokens", 5)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_unknown_flag(script):
    assert_one_line_error(run(script, "--n_embed=64"), "--n_embed")


@pytest.mark.parametrize("script", SCRIPTS)
def test_out_dir_not_writable(script, tmp_path, text_file):
    (tmp_path / "a_file").write_text("x")  # a folder cannot be made inside a file, even by root
    proc = main(script, "--input", text_file, "--out_dir", tmp_path / "a_file" / "out", *TINY[script])
    assert_one_line_error(proc, "--out_dir")


@pytest.mark.parametrize("script", SCRIPTS)
def test_missing_checkpoint(script, tmp_path):
    assert_one_line_error(main(script, "--sample_only", "--out_dir", tmp_path), "no checkpoint")
    assert_one_line_error(main(script, "--resume", "--out_dir", tmp_path), "no checkpoint")


@pytest.mark.parametrize("script", SCRIPTS)
def test_truncated_checkpoint(script, tmp_path, text_file, trained):
    copy_of_trained(trained, script, tmp_path)
    ckpt = tmp_path / "out" / "ckpt.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    assert_one_line_error(main(script, "--sample_only", "--out_dir", tmp_path / "out"), "truncated")


@pytest.mark.parametrize("script", SCRIPTS)
def test_checkpoint_of_the_other_script(script, tmp_path):
    other = "char_rnn" if script == "char_gpt.py" else "char_gpt"
    torch.save({"kind": other, "model": {"w": torch.zeros(2)}}, tmp_path / "ckpt.pt")
    assert_one_line_error(main(script, "--sample_only", "--out_dir", tmp_path), f"{other}.py")


@pytest.mark.parametrize("script", SCRIPTS)
def test_prompt_characters_missing_from_the_vocabulary(script, tmp_path, text_file, trained):
    copy_of_trained(trained, script, tmp_path)
    proc = main(script, "--sample_only", "--out_dir", tmp_path / "out", "--prompt", "ROMEO~\u00e9")
    assert_one_line_error(proc, "~", "\u00e9")


@pytest.mark.parametrize("script", SCRIPTS)
def test_loss_becoming_nan(script, tmp_path, text_file):
    proc = train_main(script, tmp_path, text_file, "--max_iters", 200, "--learning_rate", 1e9, "--grad_clip", 0,
                 "--warmup_iters", 0)
    assert_one_line_error(proc, "nan", "--learning_rate")


# ---------------------------------------------------------------- any UTF-8 text

@pytest.mark.parametrize("script", SCRIPTS)
def test_chinese_text_with_thousands_of_characters(script, tmp_path):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0x4E00, 0x4E00 + 3000, (30_000,), generator=g).tolist()
    text = "".join(chr(i) + ("\n" if n % 40 == 39 else "") for n, i in enumerate(ids))
    (tmp_path / "zh.txt").write_text(text, encoding="utf-8")
    proc = run(script, "--input", tmp_path / "zh.txt", "--out_dir", tmp_path / "out", "--max_iters", 3,
               "--eval_iters", 1, *TINY[script], "--prompt", text[:3], "--max_new_tokens", 10)
    assert proc.returncode == 0, proc.stderr
    assert "vocabulary 3000" in proc.stdout or "vocabulary 3001" in proc.stdout
    sample = proc.stdout.split("--- sample ---\n")[1]
    assert sample.startswith(text[:3]) and all(0x4E00 <= ord(c) < 0x4E00 + 3000 or c == "\n" for c in sample)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flags, words", [
    (["--temperature=-1"], ["--temperature"]),
    (["--top_k=0"], ["--top_k"]),
    (["--prompt="], ["--prompt", "empty"]),
    (["--prompt=ROMEO\u2603"], ["\u2603"]),
    (["--device=gpu"], ["--device=gpu"]),
])
def test_sampling_and_device_flags_are_checked_before_training(script, flags, words, tmp_path, text_file):
    proc = train_main(script, tmp_path, text_file, "--max_iters", 5, *flags)
    assert_one_line_error(proc, *words)
    assert not (tmp_path / "out" / "ckpt.pt").exists()  # it failed before training, not after


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_of_a_finished_run_says_the_budget_is_spent(script, tmp_path, text_file, trained):
    copy_of_trained(trained, script, tmp_path)
    proc = train_main(script, tmp_path, text_file, "--max_iters", 2, "--resume")
    assert_one_line_error(proc, "--max_iters")


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_keeps_the_training_time(script, tmp_path, text_file):
    assert train(script, tmp_path, text_file, "--max_iters", 10, "--eval_interval", 5,
                 "--max_new_tokens", 1).returncode == 0
    ckpt = torch.load(tmp_path / "out" / "ckpt.pt", weights_only=True)
    assert ckpt["train_seconds"] > 0
    proc = train(script, tmp_path, text_file, "--max_iters", 20, "--eval_interval", 5, "--resume",
                 "--max_new_tokens", 1)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["train_seconds"] >= round(ckpt["train_seconds"], 1)  # metrics rounds to 0.1 s


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_script_and_a_text_alone_in_an_empty_folder_train_and_sample(script, tmp_path):
    """Each chapter is one self-contained file: copied with input.txt into an empty folder, it trains and
    samples there, with nothing else of the repository beside it."""
    shutil.copy(REPO / script, tmp_path / script)
    shutil.copy(REPO / "input.txt", tmp_path / "input.txt")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, script, "--max_iters=50", "--max_new_tokens=200"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--- sample ---" in proc.stdout and len(proc.stdout.split("--- sample ---")[1].strip()) > 100
    assert (tmp_path / "out" / KIND[script] / "ckpt.pt").exists()
