"""Every number notebooks/00_errata.ipynb prints, pinned against a reference that does not use the code it
checks: a hand computation, finite differences, torch's own modules. (The two 8-second training runs of its
section 8 depend on the machine's speed; what is pinned there is the claim, not the loss.)"""

import math
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO

sys.path.insert(0, str(REPO))
import char_gpt as cg  # noqa: E402
import char_rnn as cr  # noqa: E402
import micrograd  # noqa: E402


def sigmoid(z):
    return 1 / (1 + math.exp(-z))


# ---------------------------------------------------------------- 2. the one-neuron example

def test_the_write_ups_formula_evaluates_to_0_0093():
    a = sigmoid(3)
    loss = (0.5 - a) ** 2
    slope = math.exp(-3) / (1 + math.exp(-3)) ** 2                  # sigma'(3), written the write-up's way
    assert round(loss, 4) == 0.2048 and round(slope, 4) == 0.0452
    assert round(loss * slope, 4) == 0.0093


def test_the_derivative_is_0_1227_and_0_248_is_neither():
    def J(w):
        return (0.5 - sigmoid(w * 1 + w * 2)) ** 2
    h = 1e-6
    derivative = (J(1 + h) - J(1 - h)) / (2 * h)                     # finite differences, no engine
    assert round(derivative, 4) == 0.1227
    assert micrograd.worked_example()[0].grad == pytest.approx(derivative, abs=1e-8)
    formula = J(1) * math.exp(-3) / (1 + math.exp(-3)) ** 2
    assert abs(0.248 - derivative) > 0.1 and abs(0.248 - formula) > 0.2


def test_the_labelled_guess_sigma_prime_of_the_loss_is_0_2474():
    loss = (0.5 - sigmoid(3)) ** 2
    assert round(sigmoid(loss) * (1 - sigmoid(loss)), 4) == 0.2474


# ---------------------------------------------------------------- 6. and 7. queries, keys, values; the softmax

def test_c_attn_is_three_matrices_and_one_shared_matrix_makes_scores_symmetric():
    C = 8
    attn = cg.CausalSelfAttention(cg.Config(n_embd=C, n_head=1, dropout=0.0))
    x = torch.randn(3, C, dtype=torch.float64)
    W = attn.c_attn.weight.detach().double()
    W_Q, W_K, W_V = W[:C], W[C:2 * C], W[2 * C:]
    q = torch.stack([W_Q @ x[i] for i in range(3)])                  # q_i = W_Q x_i, one word at a time
    k = torch.stack([W_K @ x[i] for i in range(3)])
    v = torch.stack([W_V @ x[i] for i in range(3)])
    torch.testing.assert_close(attn.c_attn.double()(x).detach(), torch.cat([q, k, v], dim=1))
    S = q @ k.T
    assert not torch.allclose(S, S.T)                                # two matrices: "i looks at j" != "j at i"
    with torch.no_grad():                                            # one matrix for both: symmetric scores
        attn.c_attn.weight[C:2 * C] = attn.c_attn.weight[:C]
        q, k, _ = attn.heads(x[None])                                # (c_attn is float64 by now)
        _, weights = cg.attention(q, k, k)
    scores = (q @ k.transpose(-2, -1))[0, 0]
    torch.testing.assert_close(scores, scores.T)
    assert weights[0, 0, 0, 0] == 1.0                                # and the mask still hides the future


def test_the_first_position_attends_only_to_itself_and_every_row_sums_to_1():
    """The first query has one visible key: a softmax over one score is 1, whatever the score."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (5 * torch.randn(2, 3, 6, 4, generator=g, dtype=torch.float64) for _ in range(3))
    out, weights = cg.attention(q, k, v)
    assert torch.all(weights[..., 0, 0] == 1.0) and torch.equal(out[..., 0, :], v[..., 0, :])
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 6, dtype=torch.float64))


# ---------------------------------------------------------------- 8. an LSTM is not a GPT

def test_an_lstm_steps_through_time_and_both_are_causal():
    torch.manual_seed(0)
    lstm = cr.CharRNN(cr.Config(cell="lstm", impl="fused", n_layer=1, n_embd=16, dropout=0.0), 20).eval()
    gpt = cg.GPT(cg.Config(n_layer=2, n_head=2, n_embd=16, block_size=24, dropout=0.0), 20).eval()
    idx = torch.randint(20, (1, 24))
    changed = idx.clone()
    changed[0, 10] = (changed[0, 10] + 1) % 20
    with torch.no_grad():
        for run in (lambda i: lstm(i)[0], lambda i: gpt(i)[0]):
            a, b = run(idx), run(changed)
            assert torch.equal(a[0, :10], b[0, :10]) and not torch.allclose(a[0, 10:], b[0, 10:])
        # the LSTM's output at t is a function of its state after t - 1 only: a step-by-step loop gives it
        cell = torch.nn.LSTMCell(16, 16)
        cell.load_state_dict({k.replace("_l0", ""): v for k, v in lstm.rnn.state_dict().items()})
        h = c = torch.zeros(1, 16)
        steps = []
        for t in range(24):
            h, c = cell(lstm.wte(idx[:, t]), (h, c))
            steps.append(h)
        torch.testing.assert_close(lstm.lm_head(torch.stack(steps, 1)), lstm(idx)[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- 9. decoder-only

def test_gpt_has_no_encoder_no_cross_attention_and_keeps_every_position():
    gpt = cg.GPT(cg.Config(n_layer=2, n_head=4, n_embd=64, block_size=64, dropout=0.0), 65).eval()
    names = {type(m).__name__ for m in gpt.modules()}
    assert names == {"GPT", "Embedding", "Dropout", "ModuleList", "Block", "LayerNorm", "CausalSelfAttention",
                     "Linear", "MLP"}
    x = torch.randint(65, (1, 50))
    h = gpt.wte(x) + gpt.wpe(torch.arange(50))
    for block in gpt.blocks:
        h = block(h)
        assert h.shape == (1, 50, 64)


# ---------------------------------------------------------------- 10. post-LN vs pre-LN

def test_post_ln_keeps_the_stream_at_rms_1_pre_ln_lets_it_grow():
    """The notebook's 24-block stack (Xavier initialisation), against both forms written with torch's own
    F.layer_norm: post-LN's stream has RMS exactly 1 at every position, pre-LN's grows, and more gradient
    reaches the input through pre-LN."""
    torch.manual_seed(0)
    blocks = cg.GPT(cg.Config(n_layer=24, n_head=4, n_embd=64, block_size=32, dropout=0.0), 65).blocks
    for p in blocks.parameters():
        if p.dim() == 2:
            torch.nn.init.xavier_uniform_(p)
    x0, direction = torch.randn(4, 32, 64), torch.randn(4, 32, 64)
    ends, grads = {}, {}
    for name in ("pre", "post"):
        x = x0.clone().requires_grad_()
        h = x
        for b in blocks:
            if name == "pre":
                h = h + b.attn(F.layer_norm(h, (64,)))
                h = h + b.mlp(F.layer_norm(h, (64,)))
            else:
                h = F.layer_norm(h + b.attn(h), (64,))
                h = F.layer_norm(h + b.mlp(h), (64,))
        (h * direction).mean().backward()
        ends[name], grads[name] = h.detach(), x.grad.norm().item()
    with torch.no_grad():
        pre = x0
        for b in blocks:
            pre = b(pre)                                              # char_gpt's Block is the pre-LN form
    torch.testing.assert_close(pre, ends["pre"], rtol=1e-5, atol=1e-5)
    rms = ends["post"].pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.ones_like(rms), rtol=0, atol=1e-4)
    assert ends["pre"].pow(2).mean().sqrt() > 3 * x0.pow(2).mean().sqrt()
    assert grads["pre"] > 2 * grads["post"]


# ---------------------------------------------------------------- 11. the head's shape

def test_the_head_reads_the_stream_not_the_ffn_width():
    gpt = cg.GPT(cg.Config(n_layer=1, n_head=4, n_embd=64, block_size=16, dropout=0.0), 65)
    assert gpt.lm_head.weight.shape == (65, 64) and gpt.lm_head.weight is gpt.wte.weight
