"""char_gpt.py's model, checked against references: the attention formula against torch's fused kernel,
causality, the key/value cache against full recomputation, and that the model can learn."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, SMALL_TEXT

sys.path.insert(0, str(REPO))
import char_gpt as cg  # noqa: E402


def tiny_config(**kw):
    base = dict(n_layer=2, n_head=4, n_embd=32, block_size=24, dropout=0.0, batch_size=4)
    return cg.Config(**(base | kw))


def tiny_model(vocab_size=20, seed=0, **kw):
    torch.manual_seed(seed)
    return cg.GPT(tiny_config(**kw), vocab_size).eval()


# ---------------------------------------------------------------- attention

def test_attention_by_hand_equals_the_fused_kernel():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 17, 8, generator=g, dtype=torch.float64) for _ in range(3))
    ours, weights = cg.attention(q, k, v)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 17, dtype=torch.float64))
    assert torch.all(weights.triu(diagonal=1) == 0)  # no weight on the future


def test_attention_with_cached_keys_masks_only_the_future():
    """Queries for the last 3 of 7 positions (the first 4 keys from a cache) = the last 3 rows of full attention."""
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 3, 7, 4, generator=g, dtype=torch.float64) for _ in range(3))
    full, full_w = cg.attention(q, k, v)
    part, part_w = cg.attention(q[:, :, 4:], k, v)
    torch.testing.assert_close(part, full[:, :, 4:])
    torch.testing.assert_close(part_w, full_w[:, :, 4:])


def test_attention_weights_match_a_loop_over_positions():
    """softmax(q_t . k_s / sqrt(d)) for s <= t, one position at a time: the formula read literally."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 1, 5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    _, weights = cg.attention(q, k, v)
    for t in range(5):
        scores = torch.stack([q[0, 0, t] @ k[0, 0, s] / 3 ** 0.5 for s in range(t + 1)])
        torch.testing.assert_close(weights[0, 0, t, : t + 1], torch.softmax(scores, 0))


def test_model_gives_the_same_logits_by_hand_and_fast():
    model = tiny_model()
    idx = torch.randint(20, (2, 24))
    fast, _ = model(idx)
    maps = model.attention_maps(idx)
    for block in model.blocks:
        block.attn.keep_weights = True
    by_hand, _ = model(idx)
    torch.testing.assert_close(by_hand, fast, rtol=1e-5, atol=1e-5)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 24, 24)


def test_bfloat16_autocast_on_cpu_stays_close_to_float32():
    """The CPU bf16 path (matmuls in bf16, attention in float32) computes the same function, to bf16's precision."""
    model = tiny_model()
    idx, targets = torch.randint(20, (2, 24)), torch.randint(20, (2, 24))
    ref, ref_loss = model(idx, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, low_loss = model(idx, targets)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0, atol=0.05)
    torch.testing.assert_close(low_loss, ref_loss, rtol=0.01, atol=0)
    low_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_changing_a_future_character_never_changes_an_earlier_logit():
    model = tiny_model()
    idx = torch.randint(20, (1, 24))
    logits, _ = model(idx)
    for t in (0, 7, 23):
        changed = idx.clone()
        changed[0, t] = (changed[0, t] + 1) % 20
        new, _ = model(changed)
        torch.testing.assert_close(new[0, :t], logits[0, :t], rtol=0, atol=0)
        assert not torch.allclose(new[0, t:], logits[0, t:])


def test_loss_is_the_cross_entropy_of_the_logits():
    model = tiny_model()
    idx, targets = torch.randint(20, (2, 10)), torch.randint(20, (2, 10))
    logits, loss = model(idx, targets)
    log_p = torch.log_softmax(logits, -1).gather(-1, targets[..., None])
    torch.testing.assert_close(loss, -log_p.mean())


def test_parameter_count_and_weight_tying():
    model = tiny_model(vocab_size=65, n_layer=4, n_head=4, n_embd=128, block_size=64)
    C, V, T = 128, 65, 64
    per_block = 2 * C + C * 3 * C + C * C + C * 4 * C + 4 * C * C   # 2 LayerNorm gains, qkv, proj, MLP
    assert cg.count_params(model) == V * C + T * C + 4 * per_block + C
    assert cg.count_params(model) == 804_096                          # nanoGPT's recipe model, all counted
    assert model.lm_head.weight is model.wte.weight


# ---------------------------------------------------------------- sampling

def test_kv_cache_logits_equal_full_recomputation():
    model = tiny_model()
    idx = torch.randint(20, (2, 24))
    full, _ = model(idx)
    caches = [cg.KVCache() for _ in model.blocks]
    step, _ = model(idx[:, :10], caches=caches)              # a prompt of 10 at once
    pieces = [step]
    for t in range(10, 24):                                  # then one character at a time
        step, _ = model(idx[:, t:t + 1], caches=caches)
        pieces.append(step)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_greedy_generation_with_cache_equals_without():
    model = tiny_model()
    prompt = torch.randint(20, (1, 5))
    cached = cg.generate(model, prompt, 19, temperature=0)   # fills the window exactly
    naive = cg.generate_naive(model, prompt, 19, temperature=0)
    assert torch.equal(cached, naive)


def test_generation_past_the_window_recomputes_from_a_cropped_context():
    model = tiny_model()
    prompt = torch.randint(20, (1, 5))
    out = cg.generate(model, prompt, 60, temperature=0)
    assert out.shape == (1, 65) and torch.equal(out[:, :5], prompt)
    # the first character after the crop is the greedy choice given the last block_size // 2 characters
    first_after_crop = 5 + (24 - 5)  # cache full after prompt + 19 new characters: t = 24 is produced next
    context = out[:, first_after_crop - 12: first_after_crop]
    logits, _ = model(context)
    assert out[0, first_after_crop] == logits[0, -1].argmax()


def test_top_k_and_temperature():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0]])
    g = torch.Generator().manual_seed(0)
    draws = torch.cat([cg.sample_next(logits, 1.0, 2, g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1}           # only the top 2 are ever drawn
    cold = torch.cat([cg.sample_next(logits, 0.05, None, g) for _ in range(100)])
    assert (cold == 0).all()                                 # near-zero temperature: the argmax


# ---------------------------------------------------------------- learning

def test_overfits_one_batch():
    torch.manual_seed(0)
    cfg = tiny_config(learning_rate=3e-3, weight_decay=0.0)
    model = cg.GPT(cfg, 20)
    optimizers = cg.make_optimizers(model, cfg)
    _, autocast, scaler = cg.setup_precision(cg.Config(dtype="float32"), "cpu")
    x = torch.randint(20, (4, 24))
    y = torch.roll(x, -1, dims=1)
    for _ in range(150):
        loss = cg.train_step(model, optimizers, scaler, autocast, x, y, cfg.learning_rate, grad_clip=1.0)
    assert loss.item() < 0.1


def test_each_parameter_has_one_optimizer_muon_takes_the_blocks_matrices():
    cfg = tiny_config(learning_rate=1e-3)
    model = cg.GPT(cfg, 20)
    muon, adamw = cg.make_optimizers(model, cfg)
    in_muon = [p for g in muon.param_groups for p in g["params"]]
    in_adamw = [p for g in adamw.param_groups for p in g["params"]]
    assert sorted(map(id, in_muon + in_adamw)) == sorted(map(id, model.parameters()))  # all, once each
    blocks_matrices = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.dim() == 2]
    assert {id(p) for p in in_muon} == {id(p) for p in blocks_matrices}
    assert len(blocks_matrices) == 4 * cfg.n_layer  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    decayed = [p for g in adamw.param_groups if g["weight_decay"] > 0 for p in g["params"]]
    assert {id(p) for p in decayed} == {id(model.wte.weight), id(model.wpe.weight)}
    (alone,) = cg.make_optimizers(model, tiny_config(learning_rate=1e-3, optimizer="adamw"))
    assert sorted(id(p) for g in alone.param_groups for p in g["params"]) == sorted(map(id, model.parameters()))


def test_a_muon_step_is_the_gradients_singular_vectors_with_singular_values_near_1():
    """Section 4b's claim: from zero momentum, W changes by -lr * 0.2 sqrt(max(rows, cols)) * O with
    O = U S' V^T, where G = U S V^T and every S' is near 1 (Newton-Schulz is approximate), whatever S is."""
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.zeros(64, 16))
    G = torch.randn(64, 16) @ torch.diag(torch.logspace(0, -2, 16))  # singular values spread over 100x
    W.grad = G.clone()
    torch.optim.Muon([W], lr=0.1, weight_decay=0.0, adjust_lr_fn="match_rms_adamw").step()
    O = -W.detach() / (0.1 * 0.2 * 64 ** 0.5)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    inner = U.T @ O @ Vh.T                                   # diagonal if O has G's singular vectors
    assert (inner - torch.diag(inner.diag())).abs().max() < 0.03
    assert inner.diag().min() > 0.5 and inner.diag().max() < 1.3


def test_learning_rate_warms_up_then_decays_to_min_lr():
    cfg = cg.Config(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=100)
    assert cg.get_lr(0, 0.0, cfg) == pytest.approx(1e-4)
    assert cg.get_lr(9, 0.0, cfg) == pytest.approx(1e-3)
    assert cg.get_lr(5, 0.5, cfg) == pytest.approx(0.6 * (1e-3 + 1e-4) / 2)  # warm-up scales the cosine
    assert cg.get_lr(55, 0.5, cfg) == pytest.approx((1e-3 + 1e-4) / 2)
    assert cg.get_lr(100, 1.0, cfg) == pytest.approx(1e-4)
    assert cg.budget_progress(50, 30.0, cg.Config(max_iters=100, max_seconds=40)) == 0.75  # time runs out first


def test_train_function_returns_history(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(SMALL_TEXT)
    cfg = tiny_config(input=str(path), out_dir=str(tmp_path / "o"), max_iters=10, eval_interval=5, eval_iters=2)
    result = cg.train(cfg, quiet=True)
    assert [row[0] for row in result["history"]] == [0, 5, 10]
    assert result["metrics"]["iters"] == 10


# ---------------------------------------------------------------- several processes

def test_torchrun_two_processes_on_cpu(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(SMALL_TEXT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "char_gpt.py"), f"--input={path}", f"--out_dir={tmp_path / 'o'}", "--max_iters=10",
           "--eval_interval=5", "--eval_iters=2", "--n_layer=1", "--n_head=2", "--n_embd=16",
           "--block_size=16", "--batch_size=4", "--max_new_tokens=5", "--device=cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stdout
    assert proc.stdout.count("--- sample ---") == 1   # only rank 0 talks and writes
    ckpt = torch.load(tmp_path / "o" / "ckpt.pt", weights_only=True)
    assert ckpt["iter"] == 10
