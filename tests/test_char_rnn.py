"""char_rnn.py's model, checked against references: each cell against torch's one-step cell, backpropagation
through time by hand against autograd, the scratch stack against torch's fused nn.RNN/LSTM/GRU (outputs and
gradients), checkpoints across impls, the streams batching, and that the model can learn."""

import sys
from dataclasses import asdict

import pytest
import torch
from helpers import REPO, SMALL_TEXT

sys.path.insert(0, str(REPO))
import char_rnn as cr  # noqa: E402

CELLS = ["rnn", "lstm", "gru"]
TORCH_CELL = {"rnn": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}


def tiny_config(**kw):
    base = dict(cell="lstm", impl="scratch", n_layer=2, n_embd=16, block_size=12, dropout=0.0, batch_size=3)
    return cr.Config(**(base | kw))


def tiny_model(vocab_size=20, seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    return cr.CharRNN(tiny_config(**kw), vocab_size).to(dtype)


def random_hidden(cell, n_layer, B, H, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n_layer, B, H, generator=g, dtype=dtype)
    return (h, torch.randn(n_layer, B, H, generator=g, dtype=dtype)) if cell == "lstm" else h


def flat(hidden):
    return list(hidden) if isinstance(hidden, tuple) else [hidden]


# ---------------------------------------------------------------- one step of each cell

@pytest.mark.parametrize("cell", CELLS)
def test_cell_equations_match_torch_one_step(cell):
    torch.manual_seed(0)
    ref = TORCH_CELL[cell](5, 7).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(4, 5, generator=g, dtype=torch.float64)
    h = torch.randn(4, 7, generator=g, dtype=torch.float64)
    c = torch.randn(4, 7, generator=g, dtype=torch.float64)
    xw = x @ ref.weight_ih.T + ref.bias_ih
    if cell == "lstm":
        ours, expected = cr.lstm_cell(xw, (h, c), ref.weight_hh, ref.bias_hh), ref(x, (h, c))
        torch.testing.assert_close(ours[0], expected[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(ours[1], expected[1], rtol=0, atol=1e-12)
    else:
        ours = cr.CELLS[cell](xw, h, ref.weight_hh, ref.bias_hh)
        torch.testing.assert_close(ours, ref(x, h), rtol=0, atol=1e-12)


def test_lstm_cell_reads_literally():
    """c' = f*c + i*g, h' = o*tanh(c'), with the gates in torch's order i, f, g, o."""
    H = 3
    g = torch.Generator().manual_seed(3)
    xw, h, c = (torch.randn(2, n, generator=g, dtype=torch.float64) for n in (4 * H, H, H))
    w_hh, b_hh = torch.zeros(4 * H, H, dtype=torch.float64), torch.zeros(4 * H, dtype=torch.float64)
    i, f, gg, o = xw.split(H, dim=1)
    c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(gg)
    h_new, c_ours = cr.lstm_cell(xw, (h, c), w_hh, b_hh)
    torch.testing.assert_close(c_ours, c_new)
    torch.testing.assert_close(h_new, torch.sigmoid(o) * torch.tanh(c_new))


# ---------------------------------------------------------------- backpropagation through time by hand

def rnn_layer_and_chunk(B=3, T=6, I=4, H=5, seed=0):
    torch.manual_seed(seed)
    rnn = torch.nn.RNN(I, H, 1, batch_first=True).double()
    g = torch.Generator().manual_seed(seed + 1)
    x, h0, dh_out = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((B, T, I), (B, H), (B, T, H)))
    return rnn, x, h0, dh_out


def by_hand(rnn, x, h0, dh_out):
    return cr.rnn_bptt(x, h0, rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.weight_hh_l0, rnn.bias_hh_l0, dh_out)


def test_bptt_by_hand_matches_autograd():
    """rnn_bptt's backward walk gives autograd's gradients for the input, every weight and the carried h0
    (dh0: what truncation throws away), given any dL/dh_t from above."""
    rnn, x, h0, dh_out = rnn_layer_and_chunk()
    x, h0 = x.clone().requires_grad_(), h0.clone().requires_grad_()
    out, _ = rnn(x, h0[None])
    (out * dh_out).sum().backward()                   # a loss whose dL/dh_t is exactly dh_out[:, t]
    expected = [x.grad, rnn.weight_ih_l0.grad, rnn.bias_ih_l0.grad, rnn.weight_hh_l0.grad, rnn.bias_hh_l0.grad,
                h0.grad]
    with torch.no_grad():
        ours = by_hand(rnn, x, h0, dh_out)
    assert len(ours) == len(expected)
    for name, a, b in zip(["dx", "dw_ih", "db_ih", "dw_hh", "db_hh", "dh0"], ours, expected, strict=True):
        assert a.shape == b.shape, name
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)
    assert h0.grad.abs().max() > 1e-3                  # the state carried in does get a gradient


def test_check_bptt_reports_rounding_only():
    errors = cr.check_bptt(T=9)
    assert set(errors) == {"dx", "dw_ih", "db_ih", "dw_hh", "db_hh", "dh0"} and max(errors.values()) < 1e-10


def test_truncation_drops_exactly_dh0():
    """Two chunks: the full gradient of W_hh is chunk 2's walk plus chunk 1's walk with chunk 2's dh0 added
    to its last step. Truncated BPTT leaves that dh0 out, and that is all it leaves out."""
    rnn, x, h0, dh_out = rnn_layer_and_chunk(T=8)
    with torch.no_grad():
        out, _ = rnn(x[:, :4], h0[None])
        h_mid = out[:, -1]                                                  # the state chunk 2 starts from
        second = by_hand(rnn, x[:, 4:], h_mid, dh_out[:, 4:])
        carried = dh_out[:, :4].clone()
        carried[:, -1] += second[5]                                         # dh0 of chunk 2 flows into chunk 1
        first_full = by_hand(rnn, x[:, :4], h0, carried)
        first_truncated = by_hand(rnn, x[:, :4], h0, dh_out[:, :4])
    whole = by_hand(rnn, x, h0, dh_out)
    for i in range(1, 5):                                                   # the four weight gradients
        torch.testing.assert_close(first_full[i] + second[i], whole[i], rtol=0, atol=1e-10)
    assert (first_truncated[3] + second[3] - whole[3]).abs().max() > 1e-6   # truncation changes dW_hh


# ---------------------------------------------------------------- scratch == fused

@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)])
@pytest.mark.parametrize("cell", CELLS)
def test_scratch_equals_fused_outputs_and_gradients(cell, dtype, tol):
    """The whole stack (3 layers, carried non-zero hidden state): outputs, final state, and the gradients
    of every parameter and of the input and initial state agree."""
    n_layer, B, T, H = 3, 2, 7, 16
    torch.manual_seed(0)
    rnn = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell](
        H, H, n_layer, batch_first=True).to(dtype)
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(B, T, H, generator=g, dtype=dtype)
    w_out = torch.randn(B, T, H, generator=g, dtype=dtype)     # a random read-out, so every output matters
    results = []
    for impl in ("scratch", "fused"):
        rnn.zero_grad()
        x = x0.clone().requires_grad_()
        hidden = tuple(t.requires_grad_() for t in flat(random_hidden(cell, n_layer, B, H, dtype)))
        hidden_in = hidden if cell == "lstm" else hidden[0]
        out, h_last = cr.run_scratch(cell, rnn, x, hidden_in) if impl == "scratch" else rnn(x, hidden_in)
        loss = (out * w_out).sum() + sum(t.sum() ** 2 for t in flat(h_last))
        loss.backward()
        grads = [p.grad.clone() for p in rnn.parameters()] + [x.grad] + [t.grad for t in hidden]
        results.append([out.detach(), *[t.detach() for t in flat(h_last)], *grads])
    assert len(results[0]) == len(results[1])
    for ours, ref in zip(*results, strict=True):
        assert (ours - ref).abs().max().item() < tol


@pytest.mark.parametrize("cell", CELLS)
def test_one_checkpoint_loads_into_either_impl(cell, tmp_path):
    """Train a few steps with scratch, save a checkpoint (weights_only), load it as fused: same logits and state."""
    model = tiny_model(cell=cell, impl="scratch")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = torch.randint(20, (3, 13))
    for _ in range(3):
        _, loss, _ = model(idx[:, :-1], idx[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
    itos = [chr(65 + i) for i in range(20)]
    torch.save({"kind": "char_rnn", "config": asdict(tiny_config(cell=cell)), "itos": itos,
                "model": model.state_dict()}, tmp_path / "ckpt.pt")
    for impl in ("scratch", "fused"):
        loaded, loaded_itos = cr.load_model(tmp_path, impl=impl)
        assert loaded.impl == impl and loaded_itos == itos
    fused = loaded
    model.eval()
    a, _, ha = model(idx)
    b, _, hb = fused(idx)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for s, f in zip(flat(ha), flat(hb), strict=True):
        torch.testing.assert_close(s, f, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the model

@pytest.mark.parametrize("cell", CELLS)
def test_shapes(cell):
    model = tiny_model(cell=cell, vocab_size=20)
    logits, loss, hidden = model(torch.randint(20, (3, 12)), torch.randint(20, (3, 12)))
    assert logits.shape == (3, 12, 20) and loss.shape == ()
    for h in flat(hidden):
        assert h.shape == (2, 3, 16)
    assert len(flat(hidden)) == (2 if cell == "lstm" else 1)


@pytest.mark.parametrize("cell", CELLS)
def test_evaluate_text_in_pieces_equals_one_pass_over_the_whole_text(cell):
    """Carrying the hidden state from piece to piece, the pieces' length cannot change the loss."""
    model = tiny_model(cell=cell, impl="fused").eval()
    data = torch.randint(20, (50,), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    logits, _, _ = model(data[:-1].long()[None])
    one_pass = torch.nn.functional.cross_entropy(logits[0], data[1:].long()).item()
    for piece in (7, 12, 49, 100):
        assert cr.evaluate_text(model, data, piece, "cpu") == pytest.approx(one_pass, abs=1e-6)


def test_encode_text_equals_encode_in_the_smallest_type():
    text = "ROMEO: 你好, wörld 🎉\n" * 50
    itos = cr.build_vocab(text)
    stoi = {c: i for i, c in enumerate(itos)}
    ids = cr.encode_text(text, stoi, slice_chars=37)
    assert ids.dtype == torch.uint8 and ids.tolist() == cr.encode(text, stoi)
    x, y = cr.get_chunk(cr.make_streams(ids, 3), 1, 5)
    assert x.dtype == y.dtype == torch.int64


def test_loss_starts_near_log_vocab():
    _, loss, _ = tiny_model(vocab_size=20)(torch.randint(20, (3, 12)), torch.randint(20, (3, 12)))
    assert abs(loss.item() - torch.log(torch.tensor(20.0)).item()) < 0.5


def test_carried_hidden_state_continues_the_sequence():
    """Two chunks with the state carried between them give the same logits as one long chunk."""
    model = tiny_model(cell="gru", impl="fused").eval()
    idx = torch.randint(20, (3, 24))
    whole, _, _ = model(idx)
    first, _, h = model(idx[:, :10])
    second, _, _ = model(idx[:, 10:], hidden=h)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["scratch", "fused"])
def test_overfits_one_batch(impl):
    torch.manual_seed(0)
    text = "hello world, this is a tiny text. " * 2
    itos = cr.build_vocab(text)
    ids = torch.tensor(cr.encode(text, {c: i for i, c in enumerate(itos)}))
    x, y = ids[None, :-1], ids[None, 1:]
    model = cr.CharRNN(tiny_config(impl=impl, n_embd=32, n_layer=1), len(itos))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(150):
        _, loss, _ = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss.item() < 0.1


def test_generate_primes_on_the_prompt_and_is_seeded():
    model = tiny_model()
    prompt = torch.tensor([[1, 2, 3]])
    a = cr.generate(model, prompt, 15, generator=torch.Generator().manual_seed(0))
    b = cr.generate(model, prompt, 15, generator=torch.Generator().manual_seed(0))
    assert a.shape == (1, 18) and torch.equal(a[:, :3], prompt) and torch.equal(a, b)
    greedy = cr.generate(model, prompt, 5, temperature=0)
    top1 = cr.generate(model, prompt, 5, top_k=1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(greedy, top1)


# ---------------------------------------------------------------- data: the streams

def test_streams_are_contiguous_slices_of_the_text():
    data = torch.arange(100)
    streams = cr.make_streams(data, 4)                                  # 4 streams of 25
    assert streams.shape == (4, 25)
    assert torch.equal(streams.flatten(), data)


def test_consecutive_chunks_continue_each_other():
    data = torch.arange(103)
    streams = cr.make_streams(data, 4)
    T = 5
    assert cr.chunks_per_pass(streams, T) == 4                          # 25 per stream, 4 chunks of 5 + 1
    x0, y0 = cr.get_chunk(streams, 0, T)
    x1, y1 = cr.get_chunk(streams, 1, T)
    assert torch.equal(y0, x0 + 1) and torch.equal(y1, x1 + 1)         # targets: the next character
    assert torch.equal(x1[:, 0], x0[:, -1] + 1)                         # chunk 1 starts where chunk 0 ended
    assert torch.equal(x0[:, 0], torch.tensor([0, 25, 50, 75]))         # each row its own part of the text
    x3, y3 = cr.get_chunk(streams, 3, T)
    assert y3.shape == (4, T) and y3[0, -1].item() == 20                # the last chunk still has targets


def test_training_carries_the_hidden_state_and_resets_it_each_pass(monkeypatch, tmp_path):
    """Record the hidden state the model is given at every step: None at each pass's first chunk,
    and exactly the previous step's (detached) final state otherwise."""
    text = SMALL_TEXT[:300]
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    cfg = cr.Config(input=str(tmp_path / "t.txt"), out_dir=str(tmp_path / "out"), cell="gru", impl="fused",
                    n_layer=1, n_embd=8, block_size=10, batch_size=2, max_iters=30, eval_interval=1000,
                    eval_iters=1, warmup_iters=0)
    seen = []
    forward = cr.CharRNN.forward

    def spy(self, idx, targets=None, hidden=None):
        out = forward(self, idx, targets, hidden)
        if self.training:
            seen.append((idx.clone(), hidden, out[2]))
        return out
    monkeypatch.setattr(cr.CharRNN, "forward", spy)
    cr.run(cfg, quiet=True)
    n_chunks = (int(0.9 * len(text)) // 2 - 1) // 10                    # 135 per stream -> 13 chunks
    assert len(seen) == 30 and n_chunks == 13
    for step, (_, given, _) in enumerate(seen):
        if step % n_chunks == 0:
            assert given is None, step
        else:
            previous_out = seen[step - 1][2]
            assert torch.equal(given, previous_out.detach()) and not given.requires_grad
    assert torch.equal(seen[n_chunks][0], seen[0][0])                   # a new pass reads the start again


def test_text_too_short_for_the_streams(tmp_path):
    (tmp_path / "t.txt").write_text("abc" * 100)
    with pytest.raises(cr.UsageError, match="too short"):
        cr.read_data(cr.Config(input=str(tmp_path / "t.txt"), batch_size=8, block_size=16))


def test_torchrun_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(cr.UsageError, match="not torchrun"):
        cr.run(cr.Config(), quiet=True)
