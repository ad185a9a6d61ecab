"""char_gpt.py's model, checked against references: the attention formula against torch's fused kernel,
causality, the key/value cache against full recomputation, and that the model can learn."""

import math
import os
import subprocess
import sys
from contextlib import nullcontext

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


# ---------------------------------------------------------------- data

@pytest.mark.parametrize("n_chars, dtype", [(65, torch.uint8), (3000, torch.int16), (40000, torch.int32)])
def test_encode_text_equals_encode_in_the_smallest_type(n_chars, dtype):
    g = torch.Generator().manual_seed(0)
    codes = [*range(0x20, 0x7F), *range(0x4E00, 0x9FFF), *range(0x1F300, 0x1F3FF), *range(0x20000, 0x2A6DF)]
    chosen = torch.randperm(len(codes), generator=g)[:n_chars].tolist()
    text = "".join(chr(codes[i]) for i in chosen) * 3
    itos = cg.build_vocab(text)
    stoi = {c: i for i, c in enumerate(itos)}
    ids = cg.encode_text(text, stoi, slice_chars=1000)  # several slices
    assert ids.dtype == dtype and ids.tolist() == cg.encode(text, stoi)


def test_encode_text_names_the_characters_the_vocabulary_lacks():
    with pytest.raises(cg.UsageError, match="'xz'"):
        cg.encode_text("abxaz", {"a": 0, "b": 1})


def test_batches_are_int64_whatever_the_stored_type():
    data = torch.arange(100, dtype=torch.uint8)
    x, y = cg.get_batch(data, 4, 8, torch.Generator().manual_seed(0))
    assert x.dtype == y.dtype == torch.int64 and torch.equal(y[:, :-1], x[:, 1:])


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
    part, part_w = cg.attention_after_cache(q[:, :, 4:], k, v)
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


def test_attention_maps_run_the_model_by_hand_and_give_its_logits():
    """attention_maps runs the blocks with the written-out attention: its final stream, through ln_f and
    lm_head, gives the fused model's logits; and its weights are causal rows that sum to 1."""
    model = tiny_model()
    idx = torch.randint(20, (2, 24))
    fast, _ = model(idx)
    streams = []
    hook = model.ln_f.register_forward_pre_hook(lambda m, args: streams.append(args[0]))
    model(idx)
    hook.remove()
    maps = cg.attention_maps(model, idx)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 24, 24)
    for w in maps:
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 4, 24))
        assert torch.all(w.triu(diagonal=1) == 0)
    # the same blocks by hand, layer by layer, agree with the fused path at the last stream
    x = model.wte(idx) + model.wpe(torch.arange(24))
    for block in model.blocks:
        y, _ = cg.attention(*block.attn.heads(block.ln_1(x)))
        x = x + block.attn.merge(y)
        x = x + block.mlp(block.ln_2(x))
    torch.testing.assert_close(x, streams[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.lm_head(model.ln_f(x)), fast, rtol=1e-5, atol=1e-5)


def test_one_new_query_after_a_cache_sees_every_key_as_the_fast_path_assumes():
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 1, 4, generator=g), torch.randn(1, 2, 6, 4, generator=g),
               torch.randn(1, 2, 6, 4, generator=g))
    out, weights = cg.attention_after_cache(q, k, v)
    assert torch.all(weights > 0)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), rtol=1e-6, atol=1e-6)


def test_float32_attention_equals_float32_attention_of_the_same_numbers():
    """The CPU bf16 path: attention computed in float32 on bf16 inputs, causal, and handed back in bf16."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = cg.float32_attention(q, k, v, dropout_p=0.0)
    ref, _ = cg.attention(q.double(), k.double(), v.double())               # the causal formula, float64
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours.double(), ref, rtol=2 ** -8, atol=1e-6)  # bf16's rounding of the output
    full = F.scaled_dot_product_attention(q.double(), k.double(), v.double())  # no mask: far from ours
    assert (ours.double() - full).abs().max() > 0.1


def test_under_bfloat16_autocast_a_future_character_never_changes_an_earlier_logit():
    model = tiny_model()
    idx = torch.randint(20, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(idx)
        for t in (3, 12, 23):
            changed = idx.clone()
            changed[0, t] = (changed[0, t] + 1) % 20
            assert torch.equal(model(changed)[0][0, :t], logits[0, :t])
            assert not torch.equal(model(changed)[0][0, t], logits[0, t])


def test_bfloat16_autocast_on_cpu_gives_the_float32_loss_to_bf16_precision():
    model = tiny_model()
    idx, targets = torch.randint(20, (2, 24)), torch.randint(20, (2, 24))
    ref, ref_loss = model(idx, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, low_loss = model(idx, targets)
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, rtol=0.02, atol=0.02 * ref.std().item())
    torch.testing.assert_close(low_loss, ref_loss, rtol=0.01, atol=0)
    low_loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def gpt2_forward(model, idx):
    """GPT-2's forward pass written from its description, with the model's weights and nothing of its
    code: embeddings; per block x += proj(attn(LN(x))), x += W2 gelu(W1 LN(x)) with exact GELU
    x Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2; heads split from one q|k|v projection; a causal
    softmax(q k^T / sqrt(d)); a final LN and logits against the token table (tied head). float64."""
    def ln(x, g):
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        return g * (x - mu) / torch.sqrt(var + 1e-5)
    W = {name: p.detach().double() for name, p in model.named_parameters()}
    T, C = idx.shape[1], W["wte.weight"].shape[1]
    x = W["wte.weight"][idx] + W["wpe.weight"][:T]
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i, block in enumerate(model.blocks):
        P, H = f"blocks.{i}.", block.attn.n_head
        d = C // H
        qkv = ln(x, W[P + "ln_1.weight"]) @ W[P + "attn.c_attn.weight"].T
        heads = [qkv[..., j * C + h * d: j * C + (h + 1) * d] for j in range(3) for h in range(H)]
        outs = []
        for h in range(H):
            q, k, v = heads[h], heads[H + h], heads[2 * H + h]
            att = (q @ k.transpose(-1, -2) / math.sqrt(d)).masked_fill(~mask, float("-inf")).softmax(-1)
            outs.append(att @ v)
        x = x + torch.cat(outs, -1) @ W[P + "attn.c_proj.weight"].T
        hidden = ln(x, W[P + "ln_2.weight"]) @ W[P + "mlp.c_fc.weight"].T
        x = x + (hidden * 0.5 * (1 + torch.erf(hidden / math.sqrt(2)))) @ W[P + "mlp.c_proj.weight"].T
    return ln(x, W["ln_f.weight"]) @ W["wte.weight"].T


def test_the_model_computes_gpt2s_forward_pass():
    model = tiny_model(n_layer=2, n_head=4, n_embd=32)
    for p in model.parameters():                            # weights away from init, so each piece matters
        p.data.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    idx = torch.randint(20, (3, 24), generator=torch.Generator().manual_seed(1))
    logits, _ = model.double()(idx)
    torch.testing.assert_close(logits, gpt2_forward(model, idx), rtol=1e-10, atol=1e-10)


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


@pytest.mark.parametrize("N", [25, 26, 40, 61])
def test_evaluate_text_predicts_every_character_once_from_the_context_it_documents(N):
    """Character t >= 1 is predicted from characters c..t-1, c = S ceil(max(0, t - T) / S), S = T / 2:
    checked one character at a time against that closed form."""
    model = tiny_model()
    T, S = 24, 12
    data = torch.randint(20, (N,), generator=torch.Generator().manual_seed(N)).to(torch.uint8)
    ref = 0.0
    for t in range(1, N):
        c = S * math.ceil(max(0, t - T) / S)
        logits, _ = model(data[c:t].long()[None])
        ref += F.cross_entropy(logits[0, -1], data[t].long()).item()
    assert cg.evaluate_text(model, data, T, "cpu") == pytest.approx(ref / (N - 1), abs=1e-6)


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


# ---------------------------------------------------------------- precision

# The decision is tested per kind of hardware by faking what it reads (machine type, CPU flags, oneDNN's
# instruction cap, a timing probe, a GPU's compute capability), never by whatever CPU the test lands on.
AVX2 = {"sse4_2", "avx", "avx2", "fma"}
AVX512 = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}       # Skylake-SP .. Ice Lake


def no_probe():
    raise AssertionError("the timing probe runs only where no CPU flags can be read")


@pytest.mark.parametrize("machine, flags, cap, native, words", [
    ("x86_64", AVX2, "", False, "AVX2"),                                    # kind 1
    ("x86_64", AVX512, "", False, "AVX-512 without it"),                    # kind 2: oneDNN says "supported"
    ("x86_64", AVX512 | {"avx512_bf16"}, "", True, "native"),              # kind 3: Cooper Lake, Zen 4
    ("x86_64", AVX512 | {"avx512_bf16", "amx_bf16", "amx_tile"}, "", True, "AMX"),  # Sapphire Rapids
    ("x86_64", AVX512 | {"avx512_bf16", "amx_bf16"}, "AVX512_CORE", False, "ONEDNN_MAX_CPU_ISA=AVX512_CORE"),
    ("x86_64", AVX512 | {"avx512_bf16", "amx_bf16"}, "AVX2", False, "AVX2 at most"),  # capped: a stand-in
    ("x86_64", AVX512, "AVX2", False, "AVX2 at most"),
    ("x86_64", AVX512 | {"avx512_bf16", "amx_bf16"}, "AVX512_CORE_AMX", True, "native"),
    ("aarch64", {"fp", "asimd", "bf16", "sve"}, "", False, "not known"),    # Graviton 3: ARM stays float32
    ("arm64", None, "", False, "not known"),                                # Apple silicon (macOS: no flags)
])
def test_cpu_bf16_by_kind_of_cpu(machine, flags, cap, native, words):
    got, why = cg.cpu_bf16(machine, flags, cap, probe=no_probe)
    assert got is native and words in why


@pytest.mark.parametrize("ratio, native", [(0.33, True), (1.0, False), (4.0, False), (40.0, False)])
def test_without_flags_an_x86_cpu_is_timed(ratio, native):
    """Windows or an Intel Mac: no /proc/cpuinfo, so a matmul timed in both formats decides."""
    got, why = cg.cpu_bf16("AMD64", None, "", probe=lambda: ratio)
    assert got is native and "test matmul" in why


def test_cpu_flags_reads_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx2 avx512f avx512_bf16\n\n"
                   "processor\t: 1\nflags\t\t: fpu avx2 avx512f avx512_bf16\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\nCPU implementer\t: 0x41\n")
    assert cg.cpu_flags(x86) == {"fpu", "avx2", "avx512f", "avx512_bf16"}
    assert cg.cpu_flags(arm) == {"fp", "asimd", "bf16"}
    assert cg.cpu_flags(tmp_path / "missing") is None


def test_the_avx512_trap_trains_in_float32(monkeypatch):
    """Kind 2 end to end, from the flags an AVX-512 CPU without bfloat16 lists (oneDNN, which the decision
    no longer asks, would call bfloat16 "supported" there)."""
    monkeypatch.setattr(cg.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(cg, "cpu_flags", lambda: set(AVX512))
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    dtype, why, autocast, scaler = cg.setup_precision(cg.Config(dtype="auto"), "cpu")
    assert dtype == "float32" and "emulated" in why and isinstance(autocast, nullcontext)
    dtype, why, _, _ = cg.setup_precision(cg.Config(dtype="bfloat16"), "cpu")   # --dtype wins, with a warning
    assert dtype == "bfloat16" and "set by --dtype" in why and "slower" in why
    monkeypatch.setattr(cg, "cpu_flags", lambda: set(AVX512) | {"amx_bf16"})
    assert cg.setup_precision(cg.Config(dtype="auto"), "cpu")[0] == "bfloat16"


def test_the_probe_times_both_formats():
    ratio = cg.bf16_probe()
    assert 0.01 < ratio < 1000                                # a ratio of two timings of the same product


@pytest.mark.parametrize("device_type, capability, dtype", [
    ("cuda", (6, 1), "float32"),     # Pascal: no tensor cores
    ("cuda", (7, 0), "float16"),     # V100
    ("cuda", (7, 5), "float16"),     # T4, the free Colab GPU: bf16 only by emulation
    ("cuda", (8, 0), "bfloat16"),    # A100
    ("cuda", (8, 6), "bfloat16"),    # RTX 30xx
    ("cuda", (9, 0), "bfloat16"),    # H100, H200
    ("mps", None, "float32"),
])
def test_precision_policy_for_each_gpu(device_type, capability, dtype):
    chosen, why = cg.choose_dtype(device_type, (True, "a CPU verdict the GPUs must ignore"), capability)
    assert chosen == dtype and why and "CPU verdict" not in why


@pytest.mark.filterwarnings("ignore:.*CUDA is not available")  # autocast and the scaler say so: no GPU here
def test_the_gpu_policy_reads_the_compute_capability(monkeypatch):
    """setup_precision hands the GPU's capability to the policy (a T4 here, no GPU needed)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    dtype, why, _, _ = cg.setup_precision(cg.Config(dtype="auto"), "cuda")
    assert dtype == "float16" and "Ampere" in why
    dtype, why, _, _ = cg.setup_precision(cg.Config(dtype="bfloat16"), "cuda")
    assert dtype == "bfloat16" and why == "set by --dtype"


MATMULS = {"mm", "addmm", "bmm", "baddbmm", "addbmm", "matmul", "linear", "_scaled_dot_product_flash_attention_for_cpu",
           "_scaled_dot_product_flash_attention_for_cpu_backward", "_scaled_dot_product_attention_math"}


def matmul_dtypes_of_one_training_run(monkeypatch, tmp_path, fast_bf16):
    """Run char_gpt.train for one step (and its evaluations) on a CPU that says it has fast bf16 or not,
    and record the input dtypes of every matmul-like op torch dispatches, optimizer included."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Recorder(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if name in MATMULS:
                dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()}
                self.seen.append((name, dtypes))
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(cg, "this_cpu_bf16", lambda: (fast_bf16, "faked"))
    path = tmp_path / "t.txt"
    path.write_text(SMALL_TEXT)
    cfg = tiny_config(input=str(path), out_dir=str(tmp_path / "o"), max_iters=1, eval_iters=1, device="cpu")
    with Recorder() as rec:
        cg.run(cfg, quiet=True)
    return rec.seen


def test_no_bfloat16_matmul_in_a_training_step_on_a_cpu_without_fast_bf16(monkeypatch, tmp_path):
    seen = matmul_dtypes_of_one_training_run(monkeypatch, tmp_path, fast_bf16=False)
    muon_rounds = [s for s in seen if s[0] == "addmm"]      # Newton-Schulz: 2 per round, 5 rounds, 8 matrices
    assert len(muon_rounds) >= 2 * 5 * 8
    assert all(torch.bfloat16 not in dtypes for _, dtypes in seen), [s for s in seen if torch.bfloat16 in s[1]]


def test_with_fast_bf16_the_model_and_muon_both_multiply_in_bfloat16(monkeypatch, tmp_path):
    """The counterpart, so the test above could fail: the recorder does see bf16 where the policy asks for it."""
    seen = matmul_dtypes_of_one_training_run(monkeypatch, tmp_path, fast_bf16=True)
    assert any(torch.bfloat16 in dtypes for name, dtypes in seen if name in ("mm", "linear"))   # forward/backward
    assert sum(torch.bfloat16 in dtypes for name, dtypes in seen if name == "addmm") >= 2 * 5 * 8  # Muon


# ---------------------------------------------------------------- sampling

def test_kv_cache_logits_equal_full_recomputation():
    model = tiny_model()
    idx = torch.randint(20, (2, 24))
    full, _ = model(idx)
    caches = [cg.KVCache(model.block_size) for _ in model.blocks]
    step, _ = model(idx[:, :10], caches=caches)              # a prompt of 10 at once
    pieces = [step]
    for t in range(10, 24):                                  # then one character at a time
        step, _ = model(idx[:, t:t + 1], caches=caches)
        pieces.append(step)
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_greedy_generation_with_cache_equals_without():
    model = tiny_model()
    prompt = torch.randint(20, (1, 5))
    naive = reference_generate(model, prompt, 19, 0, None, None)
    for generate in (cg.generate, cg.generate_fast):
        assert torch.equal(generate(model, prompt, 19, temperature=0), naive)   # fills the window exactly


def test_generation_past_the_window_recomputes_from_a_cropped_context():
    model = tiny_model()
    prompt = torch.randint(20, (1, 5))
    out = cg.generate(model, prompt, 60, temperature=0)
    assert torch.equal(out, cg.generate_fast(model, prompt, 60, temperature=0))
    assert out.shape == (1, 65) and torch.equal(out[:, :5], prompt)
    # the first character after the crop is the greedy choice given the last block_size // 2 characters
    first_after_crop = 5 + (24 - 5)  # cache full after prompt + 19 new characters: t = 24 is produced next
    context = out[:, first_after_crop - 12: first_after_crop]
    logits, _ = model(context)
    assert out[0, first_after_crop] == logits[0, -1].argmax()


def test_preallocated_cache_extend_returns_the_concatenation():
    torch.manual_seed(0)
    cache = cg.KVCache(max_len=10)
    ks, vs = [], []
    for T in (4, 1, 1, 3, 1):                                # a prompt, then single characters: 10 in all
        k, v = torch.randn(2, 3, T, 5), torch.randn(2, 3, T, 5)
        ks.append(k)
        vs.append(v)
        got_k, got_v = cache.extend(k, v)
        assert torch.equal(got_k, torch.cat(ks, dim=2)) and torch.equal(got_v, torch.cat(vs, dim=2))
        assert cache.filled == got_k.size(2)
        assert got_k.data_ptr() == cache.keys.data_ptr()     # a view of the storage, not a copy
    storage = cache.keys
    with pytest.raises(ValueError):
        cache.extend(torch.randn(2, 3, 1, 5), torch.randn(2, 3, 1, 5))   # an 11th position does not fit
    cache.clear()
    k, v = torch.randn(2, 3, 2, 5), torch.randn(2, 3, 2, 5)
    got_k, got_v = cache.extend(k, v)                        # after clear: from slot 0, in the same storage
    assert torch.equal(got_k, k) and torch.equal(got_v, v) and cache.keys is storage


@pytest.mark.parametrize("settings", [lambda m: nullcontext(), cg.sampling_settings])
def test_forward_one_equals_the_model_bit_for_bit(settings):
    model = tiny_model()
    idx = torch.randint(20, (2, 24))
    by_model = [cg.KVCache(model.block_size) for _ in model.blocks]
    by_hand = [cg.KVCache(model.block_size) for _ in model.blocks]
    weights = cg.step_weights(model)
    with torch.inference_mode(), settings(model):
        model(idx[:, :10], caches=by_model)
        model(idx[:, :10], caches=by_hand)
        for t in range(10, 24):                              # one character at a time, to the full window
            expected, _ = model(idx[:, t:t + 1], caches=by_model)
            assert torch.equal(cg.forward_one(weights, idx[:, t:t + 1], by_hand), expected[:, -1])
        assert torch.equal(by_hand[-1].k, by_model[-1].k) and torch.equal(by_hand[-1].v, by_model[-1].v)


def reference_generate(model, idx, max_new_tokens, temperature, top_k, generator):
    """The sampling loop generate and generate_fast implement, with no cache: the model re-reads the characters
    the cache would hold. They start at the last block_size of the prompt; when that context is full, it restarts
    from the last block_size // 2 characters."""
    T = model.block_size
    start = max(0, idx.size(1) - T)
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits, _ = model(idx[:, start:])
            idx = torch.cat([idx, cg.sample_next(logits[:, -1], temperature, top_k, generator)], dim=1)
            if idx.size(1) - start > T:                      # the context was full: crop
                start = idx.size(1) - max(1, T // 2)
    return idx


@pytest.mark.parametrize("generate", ["generate", "generate_fast"])
@pytest.mark.parametrize("temperature, top_k", [(1.0, None), (0.8, 5)])
def test_sampled_text_with_a_fixed_seed_equals_sampling_without_the_cache(generate, temperature, top_k):
    """Both the plain loop (torch.multinomial, the model's forward) and the fast one (the exponential race,
    forward_one) draw, bit for bit, the characters of the loop without a cache."""
    generate = getattr(cg, generate)
    model = tiny_model()
    prompt = torch.randint(20, (2, 5), generator=torch.Generator().manual_seed(1))
    def seeded():
        return torch.Generator().manual_seed(7)
    # within the window (5 + 19 = 24 = block_size): the same as re-running the window every step
    cached = generate(model, prompt, 19, temperature, top_k, generator=seeded())
    assert torch.equal(cached, reference_generate(model, prompt, 19, temperature, top_k, seeded()))
    # past it, with a prompt longer than the window: cropped contexts, the same draws as the plain loop
    long_prompt = torch.randint(20, (2, 30), generator=torch.Generator().manual_seed(2))
    cached = generate(model, long_prompt, 70, temperature, top_k, generator=seeded())
    expected = reference_generate(model, long_prompt, 70, temperature, top_k, seeded())
    assert cached.shape == (2, 100) and torch.equal(cached, expected)


def test_generate_leaves_the_thread_count_alone_and_returns_ordinary_ids():
    model = tiny_model()
    threads = torch.get_num_threads()
    seen = []
    out = cg.generate_fast(model, torch.zeros(1, 1, dtype=torch.long), 20, on_token=seen.append,
                           generator=torch.Generator().manual_seed(0))
    assert torch.get_num_threads() == threads  # it is one setting for the whole process: not generate's
    assert torch.equal(torch.cat(seen, dim=1), out[:, 1:])
    _, loss = model.train()(out[:, :-1], out[:, 1:])         # the ids can be trained on (no inference tensor)
    loss.backward()


def test_the_exponential_race_draws_what_torch_multinomial_draws():
    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0))
    logits[1, 10:] = float("-inf")                           # a row with zeros in it, as top_k leaves
    probs = torch.softmax(logits, dim=-1)
    mine, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    for _ in range(2000):                                    # the same random numbers, the same winners
        assert torch.equal(cg.draw(probs, mine), torch.multinomial(probs, 1, generator=theirs))
    # and the winners follow the probabilities: 40,000 draws from row 1 (zero beyond its first 10 characters)
    freq = torch.bincount(cg.draw(probs[1:2].expand(40_000, 40), mine)[:, 0], minlength=40) / 40_000
    assert freq[10:].sum() == 0
    torch.testing.assert_close(freq, probs[1], rtol=0, atol=0.01)   # binomial sd <= 0.0025


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
    _, _, autocast, scaler = cg.setup_precision(cg.Config(dtype="float32"), "cpu")
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
    """Section 4c's claim: from zero momentum, W changes by -lr * 0.2 sqrt(max(rows, cols)) * O with
    O = U S' V^T, where G = U S V^T and every S' is near 1 (Newton-Schulz is approximate), whatever S is."""
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.zeros(64, 16))
    G = torch.randn(64, 16) @ torch.diag(torch.logspace(0, -2, 16))  # singular values spread over 100x
    W.grad = G.clone()
    cg.Muon([W], lr=0.1, weight_decay=0.0).step()
    O = -W.detach() / (0.1 * 0.2 * 64 ** 0.5)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    inner = U.T @ O @ Vh.T                                   # diagonal if O has G's singular vectors
    assert (inner - torch.diag(inner.diag())).abs().max() < 0.03
    assert inner.diag().min() > 0.5 and inner.diag().max() < 1.3


def newton_schulz_by_svd(D, steps=5):
    """The reference for newton_schulz: the same polynomial applied to D's singular values one by one,
    O = U p(p(...p(S / |D|)...)) V^T with p(s) = a s + b s^3 + c s^5 (float64, from an SVD)."""
    U, S, Vh = torch.linalg.svd(D.double(), full_matrices=False)
    s = S / D.double().norm()
    for _ in range(steps):
        s = 3.4445 * s - 4.7750 * s ** 3 + 2.0315 * s ** 5
    return (U * s) @ Vh


@pytest.mark.parametrize("shape", [(24, 10), (10, 24), (16, 16)])
def test_newton_schulz_applies_its_polynomial_to_every_singular_value(shape):
    D = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ours = cg.newton_schulz(D, dtype=torch.float64)
    torch.testing.assert_close(ours, newton_schulz_by_svd(D), rtol=0, atol=1e-12)
    singular_values = torch.linalg.svdvals(ours)
    assert singular_values.min() > 0.6 and singular_values.max() < 1.25  # section 4c: about 0.68 to 1.2


def muon_reference(params, grads, lr, weight_decay, mu=0.95):
    """Muon as its description reads, in plain torch (float64): for each step and matrix W with gradient G,
    M = mu M + (1 - mu) G;  D = (1 - mu) G + mu M (Nesterov);  O = newton_schulz_by_svd(D);
    W = W (1 - lr wd) - lr 0.2 sqrt(max(rows, cols)) O.  Returns the weights after the last step."""
    W = [p.detach().double().clone() for p in params]
    M = [torch.zeros_like(w) for w in W]
    for step_grads in grads:
        for w, m, g in zip(W, M, step_grads, strict=True):
            m.copy_(mu * m + (1 - mu) * g.double())
            D = (1 - mu) * g.double() + mu * m
            w.copy_(w * (1 - lr * weight_decay) - lr * 0.2 * max(w.shape) ** 0.5 * newton_schulz_by_svd(D))
    return W


def muon_runs(ns_dtype, steps=6):
    """(ours, reference, start): the same matrices and gradients through our Muon and the reference."""
    g = torch.Generator().manual_seed(0)
    shapes = [(48, 16), (16, 40)]                            # tall and wide: Newton-Schulz works on the wide side
    params = [torch.nn.Parameter(0.1 * torch.randn(*s, generator=g, dtype=torch.float64)) for s in shapes]
    start = [p.detach().clone() for p in params]
    grads = [[torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes] for _ in range(steps)]
    ref = muon_reference(params, grads, lr=0.02, weight_decay=0.1)
    opt = cg.Muon(params, lr=0.02, weight_decay=0.1, ns_dtype=ns_dtype)
    for step_grads in grads:
        for p, grad in zip(params, step_grads, strict=True):
            p.grad = grad.clone()
        opt.step()
    return [p.detach() for p in params], ref, start


def test_our_muon_equals_the_reference_over_several_steps():
    """Momentum, Nesterov, weight decay and step size, exactly (float64 throughout), on every torch."""
    ours, ref, start = muon_runs(torch.float64)
    for a, b, s in zip(ours, ref, start, strict=True):
        assert (b - s).abs().max() > 0.01                    # six steps moved the weights
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_our_muon_in_bfloat16_follows_the_reference_to_bf16_rounding():
    """Newton-Schulz in bfloat16 (7 stored mantissa bits, a rounding of 0.4% per number, which five
    rounds amplify to ~1.5% of the update)."""
    ours, ref, start = muon_runs(torch.bfloat16)
    for a, b, s in zip(ours, ref, start, strict=True):
        assert relative(a - s, b - s) < 0.04


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_learning_rate_warms_up_then_decays_to_min_lr():
    """Hand-computed rates. char_rnn.py's get_lr and budget_progress are marked copies (tests/test_copies.py)."""
    cfg = cg.Config(learning_rate=1e-3, min_lr=1e-4, warmup_iters=10, max_iters=100)
    assert cg.get_lr(0, 0.0, cfg) == pytest.approx(1e-4)
    assert cg.get_lr(9, 0.0, cfg) == pytest.approx(1e-3)
    assert cg.get_lr(5, 0.5, cfg) == pytest.approx(0.6 * (1e-3 + 1e-4) / 2)  # warm-up scales the cosine
    assert cg.get_lr(55, 0.5, cfg) == pytest.approx((1e-3 + 1e-4) / 2)
    assert cg.get_lr(100, 1.0, cfg) == pytest.approx(1e-4)
    assert cg.get_lr(0, 0.5, cg.Config(learning_rate=1e-3, min_lr=1e-4, warmup_iters=0)) == pytest.approx(5.5e-4)
    assert cg.budget_progress(50, 30.0, cg.Config(max_iters=100, max_seconds=40)) == 0.75  # time runs out first


def test_train_function_returns_history(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(SMALL_TEXT)
    cfg = tiny_config(input=str(path), out_dir=str(tmp_path / "o"), max_iters=10, eval_interval=5, eval_iters=2)
    result = cg.run(cfg, quiet=True)
    assert [row[0] for row in result["history"]] == [0, 5, 10]
    assert result["metrics"]["iters"] == 10


def test_a_float16_run_on_cpu_goes_through_the_grad_scaler(monkeypatch, tmp_path):
    """--dtype=float16 (the policy's choice on pre-Ampere GPUs) on a CPU: the loss is scaled up before
    backward and the gradients unscaled before clipping and the update, and training still learns."""
    scalers = []
    setup = cg.setup_precision
    monkeypatch.setattr(cg, "setup_precision", lambda cfg, device: scalers.append(setup(cfg, device)) or scalers[-1])
    unscaled, scaled, clipped = [], [], []
    unscale, scale, clip = torch.amp.GradScaler.unscale_, torch.amp.GradScaler.scale, torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.amp.GradScaler, "unscale_", lambda self, opt: unscaled.append(1) or unscale(self, opt))
    monkeypatch.setattr(torch.amp.GradScaler, "scale", lambda self, loss: scaled.append(1) or scale(self, loss))
    # when the gradients are clipped, both optimizers' gradients must already be divided back
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_",
                        lambda params, max_norm: clipped.append(len(unscaled)) or clip(params, max_norm))
    path = tmp_path / "t.txt"
    path.write_text(SMALL_TEXT)
    cfg = tiny_config(input=str(path), out_dir=str(tmp_path / "o"), max_iters=30, eval_interval=30, eval_iters=4,
                      dtype="float16", device="cpu", learning_rate=1e-2, warmup_iters=0)
    result = cg.run(cfg, quiet=True)
    dtype, _, autocast, scaler = scalers[0]
    assert dtype == "float16" and autocast.fast_dtype == torch.float16
    assert scaler.is_enabled() and len(scaled) == 30              # every step's loss was multiplied up
    assert clipped == [2 * (i + 1) for i in range(30)]            # and divided out before each clip
    (_, first, _, *_), (_, last, _, *_) = result["history"]
    assert last < first - 0.3


# ---------------------------------------------------------------- several processes

DUMP_EACH_RANK = """
import os, sys, torch
sys.path.insert(0, {repo!r})
import char_gpt as cg
finish = cg.Books.finish
def finish_and_dump(books, n_params):  # each process writes the weights it ends with
    torch.save(books.model.state_dict(), os.path.join({dump!r}, f"rank{{books.rank}}.pt"))
    return finish(books, n_params)
cg.Books.finish = finish_and_dump
cg.main(sys.argv[1:])
"""


def test_torchrun_two_processes_on_cpu_end_with_the_same_weights(tmp_path):
    """Each process trains on its own batches (dropout on, so its own noise too); DDP averages the
    gradients, so both end with identical weights, and only rank 0 talks and writes."""
    path = tmp_path / "t.txt"
    path.write_text(SMALL_TEXT)
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(DUMP_EACH_RANK.format(repo=str(REPO), dump=str(tmp_path)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(wrapper), f"--input={path}", f"--out_dir={tmp_path / 'o'}", "--max_iters=10",
           "--eval_interval=5", "--eval_iters=2", "--n_layer=1", "--n_head=2", "--n_embd=16",
           "--block_size=16", "--batch_size=4", "--dropout=0.1", "--max_new_tokens=5", "--device=cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 processes" in proc.stdout
    assert proc.stdout.count("--- sample ---") == 1   # only rank 0 talks and writes
    ckpt = torch.load(tmp_path / "o" / "ckpt.pt", weights_only=True)
    assert ckpt["iter"] == 10
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert ranks[0].keys() == ranks[1].keys() == ckpt["model"].keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
        assert torch.equal(ranks[0][name], ckpt["model"][name]), name
    assert ckpt["history"][-1][1] < ckpt["history"][0][1]     # and they trained: the train loss fell
