"""Every number notebooks/05_errata.ipynb prints, pinned against a reference that does not use the code it
checks: a hand computation, finite differences, torch's own modules. The notebook's random examples draw from
their own seeds (torch.manual_seed(3), (5), (6), (7), (0)), and the tests below draw the same numbers in the same
order. (The two 8-second training runs of its section 8 depend on the machine's speed; what is pinned there is
the parameter counts and the claim, not the loss.)"""

import math
import sys

import numpy as np
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


# ---------------------------------------------------------------- 1. sigmoid(-2)

def test_sigmoid_of_minus_2_is_0_1192():
    by_hand = 1 / (1 + math.exp(2))
    assert round(by_hand, 4) == 0.1192
    assert micrograd.Value(-2.0).sigmoid().data == pytest.approx(by_hand, abs=1e-12)
    assert float(micrograd.sigmoid(np.float64(-2.0))) == pytest.approx(by_hand, abs=1e-12)
    assert torch.sigmoid(torch.tensor(-2.0, dtype=torch.float64)).item() == pytest.approx(by_hand, abs=1e-12)


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


def test_every_line_of_the_traced_graph_by_the_chain_rule():
    """The notebook prints micrograd.trace_graph of the example: each node's data and grad, by hand."""
    a = sigmoid(3)
    d_v10 = 2 * (0.5 - a)                                            # J = v10^2, v10 = v9 + 0.5
    d_a = d_v10 * -1                                                 # v9 = a * (-1)
    d_z = d_a * a * (1 - a)                                          # a = sigmoid(z)
    expected = {"v0": (0.5, d_v10), "v1": (-1.0, d_v10 * a), "v2": (2.0, d_z * 1.0), "w": (1.0, 3 * d_z),
                "v4": (2.0, d_z), "v5": (1.0, d_z * 1.0), "v6": (1.0, d_z), "z": (3.0, d_z), "a": (a, d_a),
                "v9": (-a, d_v10), "v10": (0.5 - a, d_v10), "J": ((0.5 - a) ** 2, 1.0)}
    printed = {}
    for line in micrograd.trace_graph(micrograd.worked_example()[1]).splitlines():
        name = line.split("=")[0].strip()
        printed[name] = (float(line.split("data=")[1].split()[0]), float(line.split("grad=")[1]))
    assert printed == {k: (round(d, 4), round(g, 4)) for k, (d, g) in expected.items()}


def test_the_labelled_guess_sigma_prime_of_the_loss_is_0_2474():
    loss = (0.5 - sigmoid(3)) ** 2
    assert round(sigmoid(loss) * (1 - sigmoid(loss)), 4) == 0.2474


def J_of(w):
    return (0.5 - sigmoid(3 * w)) ** 2


def test_only_the_tangent_stays_on_the_curve_and_the_slope_flips_at_w_minus_1():
    """The picture's numbers: how far each line through (1, J(1)) is from J at w = 1 +- 0.05; and exercise 1."""
    def gap(slope, step=0.05):
        return max(abs(J_of(1 + t) - (J_of(1) + slope * t)) for t in (-step, step))
    derivative = -2 * (0.5 - sigmoid(3)) * sigmoid(3) * (1 - sigmoid(3)) * 3   # the chain rule, by hand
    formula = J_of(1) * math.exp(-3) / (1 + math.exp(-3)) ** 2
    assert (round(gap(derivative), 4), round(gap(0.248), 4), round(gap(formula), 4)) == (0.0004, 0.0066, 0.0061)
    assert gap(derivative, 0.025) < gap(derivative) / 3.5                   # a tangent's miss: like step^2
    assert gap(0.248, 0.025) > gap(0.248) / 2.5                             # any other line's: like step
    h = 1e-6
    assert round((J_of(-1 + h) - J_of(-1 - h)) / (2 * h), 4) == -0.1227     # exercise 1: sigma(-3) = 1 - sigma(3)
    assert abs((J_of(h) - J_of(-h)) / (2 * h)) < 1e-9                      # and at w = 0, the minimum


# ---------------------------------------------------------------- 3. one nonlinearity in the feed-forward net

def test_mlp_is_w2_gelu_w1_x_about_half_negative_and_an_outer_relu_stays_above_b2():
    torch.manual_seed(3)                                             # the notebook's draw
    mlp = cg.MLP(cg.Config(n_embd=64, n_head=4, n_layer=1, block_size=16, dropout=0.0)).eval()
    x = torch.randn(1, 16, 64)
    W1, W2 = mlp.c_fc.weight.detach().double(), mlp.c_proj.weight.detach().double()
    hidden = x.double() @ W1.T
    gelu = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))     # GELU from its definition, x * Phi(x)
    reference = gelu @ W2.T
    with torch.no_grad():
        out = mlp(x)
    torch.testing.assert_close(out.double(), reference, rtol=1e-5, atol=1e-5)
    assert round((reference < 0).double().mean().item(), 2) == 0.49
    b2 = torch.full((64,), -0.5, dtype=torch.float64)               # the notebook's negative b2
    outer = torch.clamp(torch.clamp(hidden, min=0) @ W2.T, min=0) + b2
    assert torch.all(outer >= b2) and round(outer.min().item(), 4) == -0.5
    b2 = -torch.rand(64, dtype=torch.float64)                       # any negative b2: never below it
    assert torch.all(torch.clamp(torch.clamp(hidden, min=0) @ W2.T, min=0) + b2 >= b2)


# ---------------------------------------------------------------- 4. attention is not x_i * sum_j x_j

def test_the_three_vector_attention_example_by_hand():
    x = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    total = [sum(col) for col in zip(*x, strict=True)]
    assert [[xi * s for xi, s in zip(row, total, strict=True)] for row in x] == [[2, 0], [0, 2], [2, 2]]
    def softmax(row):
        e = [math.exp(v) for v in row]
        return [v / sum(e) for v in e]
    scores = [[sum(a * b for a, b in zip(xi, xj, strict=True)) / math.sqrt(2) for xj in x] for xi in x]
    weights = [softmax(row) for row in scores]
    assert [[round(w, 3) for w in row] for row in weights] == [[0.401, 0.198, 0.401], [0.198, 0.401, 0.401],
                                                               [0.248, 0.248, 0.503]]
    out = [[round(sum(w * xj[d] for w, xj in zip(row, x, strict=True)), 3) for d in range(2)] for row in weights]
    assert out == [[0.802, 0.599], [0.599, 0.802], [0.752, 0.752]]
    causal = [softmax(row[:i + 1]) + [0.0] * (2 - i) for i, row in enumerate(scores)]
    assert [round(w, 2) for w in causal[1]] == [0.33, 0.67, 0.0] and causal[0] == [1.0, 0.0, 0.0]
    xt = torch.tensor(x, dtype=torch.float64)[None, None]
    out_cg, weights_cg = cg.attention(xt, xt, xt)
    torch.testing.assert_close(weights_cg[0, 0], torch.tensor(causal, dtype=torch.float64))
    torch.testing.assert_close(out_cg, F.scaled_dot_product_attention(xt, xt, xt, is_causal=True))


# ---------------------------------------------------------------- 5. the next character, from the ones before it

def test_the_gpt_loss_is_next_character_cross_entropy_and_the_past_never_sees_the_future():
    torch.manual_seed(5)                                             # the notebook's draw
    itos = cg.build_vocab("abcdefghijklmnopqrstuvwxyz ")
    stoi = {c: i for i, c in enumerate(itos)}
    gpt = cg.GPT(cg.Config(n_embd=32, n_head=4, n_layer=2, block_size=16, dropout=0.0), len(itos)).eval()
    seq = torch.tensor([[stoi[c] for c in "the cat sat on t"]])
    inputs, targets = seq[:, :-1], seq[:, 1:]
    with torch.no_grad():
        logits, loss = gpt(inputs, targets)
        reference = F.cross_entropy(logits[0].double(), targets[0])  # torch's own, on the next characters
        assert loss.item() == pytest.approx(reference.item(), abs=1e-5) and round(reference.item(), 4) == 3.3482
        for start in (8, 3):                                         # the notebook's change, and exercise 3's
            changed = inputs.clone()
            changed[0, start:start + (7 if start == 8 else 1)] = stoi["z"]
            moved = [i for i in range(15) if not torch.allclose(logits[0, i], gpt(changed)[0][0, i], atol=1e-6)]
            assert moved == list(range(start, 15))


# ---------------------------------------------------------------- 6. and 7. queries, keys, values; the softmax

def test_the_printed_score_matrices_of_section_6():
    torch.manual_seed(6)                                             # the notebook's draw
    C = 8
    attn = cg.CausalSelfAttention(cg.Config(n_embd=C, n_head=1, dropout=0.0))
    x = torch.randn(3, C).double()
    W = attn.c_attn.weight.detach().double()
    q = [W[:C] @ x[i] for i in range(3)]                             # q_i = W_Q x_i, k_i = W_K x_i
    k = [W[C:2 * C] @ x[i] for i in range(3)]
    S = [[round(float(q[i] @ k[j]) / math.sqrt(C), 3) for j in range(3)] for i in range(3)]
    S_shared = [[round(float(q[i] @ q[j]) / math.sqrt(C), 3) for j in range(3)] for i in range(3)]
    assert S == [[-0.602, -0.108, 0.019], [0.363, 0.055, -0.289], [0.533, -0.143, 0.019]]
    assert S_shared == [[2.15, -1.478, -0.662], [-1.478, 1.187, 0.324], [-0.662, 0.324, 0.592]]


def test_the_printed_weights_of_section_7_and_exercise_2():
    torch.manual_seed(7)                                             # the notebook's draw
    e = torch.randn(4, 8).double().tolist()
    s = [[sum(a * b for a, b in zip(ei, ej, strict=True)) / math.sqrt(8) for ej in e] for ei in e]
    def softmax(row):
        m = max(row)
        ex = [math.exp(v - m) for v in row]
        return [v / sum(ex) for v in ex]
    assert round(s[0][1], 4) == -0.8227 and softmax([s[0][1]]) == [1.0]
    row = softmax(s[0])
    assert [round(w, 4) for w in row] == [0.499, 0.039, 0.3093, 0.1527] and round(row[1], 4) == 0.0390
    assert softmax([v + 5 for v in s[0]]) == pytest.approx(row)       # exercise 2: a shift changes nothing
    assert round(softmax([10 * v for v in s[0]])[0], 4) == 0.9917     # and a factor 10 sharpens the row
    assert [[round(v, 2) for v in r] for r in s] == [[1.73, -0.82, 1.25, 0.54], [-0.82, 1.93, -1.06, -0.13],
                                                     [1.25, -1.06, 3.07, -1.15], [0.54, -0.13, -1.15, 4.18]]
    assert [[round(w, 2) for w in softmax(r)] for r in s] == [[0.5, 0.04, 0.31, 0.15], [0.05, 0.81, 0.04, 0.1],
                                                              [0.14, 0.01, 0.84, 0.01], [0.03, 0.01, 0.0, 0.96]]
    assert max(s[0]) == s[0][0]                                      # the picture's numbers, and exercise 2's key 1



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


def test_the_parameter_counts_of_section_8_by_hand():
    """The GPT of section 8's first cell (notebook 4's 4.11 shape), the scripts' CPU defaults that race for
    8 seconds, counted from the shapes: a GPT has wte (V, C) (shared with the head), wpe (T, C), per block
    12 C^2 weights (c_attn 3C^2, c_proj C^2, c_fc 4C^2, c_proj 4C^2) and two LayerNorm gains, and a final
    gain; the LSTM has an embedding (V, H), 4H x (H + H) weights and two 4H biases, and a head (V, H) + V."""
    V = len(set((REPO / "input.txt").read_text(encoding="utf-8")))
    assert V == 67

    def gpt_by_hand(C, T, L):
        return V * C + T * C + L * (12 * C * C + 2 * C) + C

    def count(model):
        return sum(p.numel() for p in model.parameters())

    small = cg.GPT(cg.Config(n_layer=2, n_head=4, n_embd=64, block_size=64, dropout=0.0), V)
    assert count(small) == gpt_by_hand(64, 64, 2) == 107_008
    d = cg.DEVICE_DEFAULTS["cpu"]
    default = cg.GPT(cg.Config(n_layer=d["n_layer"], n_head=d["n_head"], n_embd=d["n_embd"],
                               block_size=d["block_size"], dropout=0.0), V)
    assert count(default) == gpt_by_hand(d["n_embd"], d["block_size"], d["n_layer"]) == 812_544
    r = cr.DEVICE_DEFAULTS["cpu"]
    H = r["n_embd"]
    lstm = cr.CharRNN(cr.Config(cell="lstm", impl="fused", n_layer=r["n_layer"], n_embd=H, dropout=0.0), V)
    assert r["n_layer"] == 1 and count(lstm) == V * H + 4 * H * (H + H) + 2 * 4 * H + H * V + V == 560_707


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


def _deep_stack(n_layer):
    """The notebook's stack: seed 0, char_gpt's blocks, Xavier-initialised matrices, then x0 and direction."""
    torch.manual_seed(0)
    blocks = cg.GPT(cg.Config(n_layer=n_layer, n_head=4, n_embd=64, block_size=32, dropout=0.0), 65).blocks
    for p in blocks.parameters():
        if p.dim() == 2:
            torch.nn.init.xavier_uniform_(p)
    return blocks, torch.randn(4, 32, 64), torch.randn(4, 32, 64)


def _through(blocks, form, x0, direction):
    """Stream RMS after each block, gradient RMS at each depth (0 = input), and the input's gradient norm,
    with both forms written with torch's own F.layer_norm (the gains are 1 at initialisation)."""
    x = x0.clone().requires_grad_()
    h, stream = x, [x]
    for b in blocks:
        if form == "pre":
            h = h + b.attn(F.layer_norm(h, (64,)))
            h = h + b.mlp(F.layer_norm(h, (64,)))
        else:
            h = F.layer_norm(h + b.attn(h), (64,))
            h = F.layer_norm(h + b.mlp(h), (64,))
        h.retain_grad()
        stream.append(h)
    (h * direction).mean().backward()
    rms = [t.detach().pow(2).mean().sqrt().item() for t in stream[1:]]
    grad = np.array([t.grad.pow(2).mean().sqrt().item() for t in stream])
    return rms, grad, x.grad.norm().item()


def test_the_printed_numbers_and_the_gradient_by_depth_of_section_10():
    blocks, x0, direction = _deep_stack(24)
    pre_rms, pre, pre_in = _through(blocks, "pre", x0, direction)
    post_rms, post, post_in = _through(blocks, "post", x0, direction)
    assert [round(pre_rms[i], 2) for i in (0, 11, 23)] == [1.14, 2.53, 3.59]
    assert all(round(r, 2) == 1.0 for r in post_rms)
    assert (round(pre_in, 4), round(post_in, 4), round(pre_in / post_in, 1)) == (0.0416, 0.0153, 2.7)
    top = direction.pow(2).mean().sqrt().item() / direction.numel()  # d mean(h * direction) / dh = direction / N
    assert pre[-1] == pytest.approx(top) and post[-1] == pytest.approx(top) and f"{top:.2e}" == "1.21e-04"
    assert np.all(np.diff(pre) < 0) and round(pre[0] / pre[-1], 1) == 3.8   # pre-LN: larger at every step down
    assert round(post.min() / post[-1], 2) == 0.58 and round(post[0] / post[-1], 1) == 1.4


def test_exercise_4_a_48_block_stack():
    blocks, x0, direction = _deep_stack(48)
    pre_rms, _, _ = _through(blocks, "pre", x0, direction)
    post_rms, _, _ = _through(blocks, "post", x0, direction)
    assert round(pre_rms[-1], 2) == 5.35 and all(round(r, 2) == 1.0 for r in post_rms)


# ---------------------------------------------------------------- 11. the head's shape

def test_the_head_reads_the_stream_not_the_ffn_width():
    gpt = cg.GPT(cg.Config(n_layer=1, n_head=4, n_embd=64, block_size=16, dropout=0.0), 67)
    assert gpt.lm_head.weight.shape == (67, 64) and gpt.lm_head.weight is gpt.wte.weight
    assert gpt.blocks[0].mlp.c_fc.weight.shape == (256, 64) and gpt.blocks[0].mlp.c_proj.weight.shape == (64, 256)
    out = torch.randn(1, 10, 512)                                    # (B, T, Embedding_size)
    with pytest.raises(RuntimeError, match=r"10x512 and 2048x1000"):
        torch.nn.Linear(2048, 1000)(out)
    assert torch.nn.Linear(512, 1000)(out).shape == (1, 10, 1000)
