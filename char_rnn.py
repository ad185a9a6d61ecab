"""char_rnn.py: a character-level recurrent network (RNN, LSTM or GRU), written to be read top to bottom.

A recurrent network reads text one character at a time and carries a hidden state h from each character
to the next: h is all it remembers of the past, and from h it predicts the next character.

What you will learn, in this order:
  1. data: a vocabulary of characters, encode/decode, a 90/10 train/val split, and the char-rnn way of
     batching: batch_size parallel streams read through the text in consecutive chunks;
  2. the cells, each written out from its equations: the vanilla RNN, the LSTM and the GRU;
  3. backpropagation through time by hand, for the vanilla RNN: the gradient walks backward over a
     chunk one step at a time (a test checks it against torch's autograd);
  4. the model: a character embedding, a stack of cells, a linear read-out to logits, and the loss. Two
     implementations of the same function: our cells in a Python loop over time (--impl=scratch), and
     torch's fused nn.RNN / nn.LSTM / nn.GRU (--impl=fused); they share the same parameters, so one
     checkpoint loads into either, and a test checks they agree;
  5. training: one step of truncated backpropagation through time (the hidden state is carried from
     chunk to chunk but gradients stop at the chunk's edge) with gradient clipping, a learning rate
     that warms up and then decays over a time budget, AdamW, evaluation;
  6. sampling: prime the hidden state on a prompt, then feed back one sampled character at a time;
  7. making it fast: a big text's encoding and the CPU settings of sampling (the fused cells are 4b's);
  8. running it: the command line, checks, checkpoints that survive a crash or Ctrl-C, the run's books.
     Machinery; skip it on a first read.
`cfg` below is a Config (section 8a): cell (rnn, lstm or gru), impl (scratch or fused), n_layer, n_embd
(the width H of the embedding and of every hidden state), block_size (the chunk length T), batch_size
(the number of streams B), dropout, the budget (max_iters, max_seconds), eval_interval, learning_rate,
min_lr, warmup_iters, weight_decay, grad_clip and eval_iters, each with its default and meaning side by side.

Run it:
  python char_rnn.py                                  # train an LSTM on input.txt, then print a sample
  python char_rnn.py --cell=gru --max_seconds=60      # a one-minute GRU
  python char_rnn.py --sample_only --prompt="ROMEO:"  # sample from the last checkpoint
  python char_rnn.py --eval_only                      # its loss on the whole val split (nats, bits)
  python serve.py --out_dir out/char_rnn              # serve it: a page and an API
  python char_rnn.py --help                           # every flag with its default

Outputs go to --out_dir (default out/char_rnn): ckpt.pt, log.csv, metrics.json, loss.png.
"""

import argparse
import csv
import json
import math
import os
import signal
import sys
import threading
import time
import typing
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


# Copied from char_gpt.py
class UsageError(Exception):
    """A problem with the input or the flags: reported as one line, without a traceback."""

# -----------------------------------------------------------------------------
# 1. Data
# -----------------------------------------------------------------------------
# A character-level model reads text one character (Unicode code point) at a time. The vocabulary
# is the sorted set of characters in the text; a character's id is its index in that list.

# Copied from char_gpt.py
def build_vocab(text):
    """The sorted distinct characters of the text: itos, with ids 0..V-1."""
    return sorted(set(text))


# Copied from char_gpt.py
def encode(s, stoi):
    return [stoi[c] for c in s]


# Copied from char_gpt.py
def decode(ids, itos):
    return "".join(itos[i] for i in ids)


# Batching the char-rnn way. A model with no memory between batches could read windows from random
# places. An RNN carries its hidden state from one batch to the next, so row b of each batch must
# continue the text exactly where row b of the previous batch stopped.
# We cut the text into batch_size equal streams, one per row, and read them all in step, block_size
# characters at a time:
#
#   text:    abcdefghijklmnopqrstuvwx          streams (B=2):  abcdefghijkl
#                                                              mnopqrstuvwx
#   chunk 0: x = [abcd, mnop], y = [bcde, nopq]    chunk 1: x = [efgh, qrst], y = [fghi, rstu]   ...
#
# The hidden state at the end of chunk k is where chunk k + 1 starts; after the last chunk that
# fits, a new pass over the text begins, from a zero hidden state.

# Copied from char_gpt.py
def split_data(data):
    """data: the text's ids, torch.tensor(encode(text, stoi)). The first 90% to train on, the last 10% to
    validate on."""
    n = int(0.9 * len(data))
    return data[:n], data[n:]


def make_streams(data, batch_size):
    """Cut the ids into batch_size contiguous streams of equal length: row b is the b-th slice of the text."""
    n = len(data) // batch_size
    return data[: n * batch_size].view(batch_size, n)                # (B, N)


def chunks_per_pass(streams, block_size):
    return (streams.size(1) - 1) // block_size  # the targets need one character past the chunk


def get_chunk(streams, k, block_size):
    """Chunk k of every stream; targets are the same characters shifted one to the left."""
    # Why shifted: at position t the model has read characters ..t and must predict character t + 1, so
    # one chunk of T characters (plus one) trains T predictions at once, one per position.
    start = k * block_size
    x = streams[:, start: start + block_size].long()                   # (B, T)
    y = streams[:, start + 1: start + block_size + 1].long()           # (B, T)
    return x, y


# -----------------------------------------------------------------------------
# 2. The cells
# -----------------------------------------------------------------------------
# A cell takes one time step's input x (B, I) and the previous state, and returns the next state.
# I is the input's width and H the state's; in this file both are n_embd.
# Every cell below computes a few "pre-activations" of the form W_ih x + b_ih + W_hh h + b_hh.
# The equations are written as in the papers, W h with h a column vector; the code computes h @ W.T:
# the same numbers, with h a (B, H) matrix whose rows are the batch's items, so one product serves
# every stream at once.
# The input half, W_ih x + b_ih, does not depend on h, so the model computes it for all time steps
# in one big matrix product before the loop over time, and hands the cell its slice `xw` (B, G*H).
# G is the number of gate blocks: 1 for the RNN, 4 for the LSTM, 3 for the GRU.
# Only W_hh h must wait for the previous step: that sequential chain is what makes RNNs slow.
# We keep torch's layout (two biases, gates stacked in torch's order) so the fused kernels can use
# the very same tensors.

# 2a. The vanilla RNN (Elman): the new state is a squashed mix of the input and the old state.
#   h' = tanh(W_ih x + b_ih + W_hh h + b_hh)
# Backpropagating through T steps multiplies T Jacobians dh'/dh = diag(1 - h'^2) W_hh (section 3 does it by
# hand): the gradient shrinks (or explodes) geometrically, so a vanilla RNN struggles to remember far back.

def rnn_cell(xw, h, w_hh, b_hh):
    """xw: (B, H) = W_ih x + b_ih; h: (B, H). Returns h' (B, H)."""
    return torch.tanh(xw + h @ w_hh.T + b_hh)


# 2b. The LSTM adds a cell state c, changed only by elementwise gating, so gradients can flow along it.
#   i = sigmoid(W_ii x + b_ii + W_hi h + b_hi)    input gate: how much of the candidate to write
#   f = sigmoid(W_if x + b_if + W_hf h + b_hf)    forget gate: how much of the old c to keep
#   g = tanh   (W_ig x + b_ig + W_hg h + b_hg)    candidate values
#   o = sigmoid(W_io x + b_io + W_ho h + b_ho)    output gate: how much of c to show
#   c' = f * c + i * g
#   h' = o * tanh(c')
# The code stacks the four blocks in torch's order: W_ih = [W_ii; W_if; W_ig; W_io] (4H x I), W_hh =
# [W_hi; W_hf; W_hg; W_ho] (4H x H), and the biases likewise (4H), so one product gives all four gates.
# When f is near 1 and i near 0, c passes through unchanged: a memory that lasts many steps.
# And so does its gradient: along the cell state, dc'/dc = f, elementwise, with no product by a matrix,
# so stepping back through time scales the gradient by f (near 1 where the cell keeps its memory)
# instead of multiplying it by the Jacobian diag(1 - h^2) W_hh as in the vanilla RNN.

def lstm_cell(xw, state, w_hh, b_hh):
    """xw: (B, 4H) = W_ih x + b_ih; state: (h, c), each (B, H). Returns (h', c')."""
    h, c = state
    gates = xw + h @ w_hh.T + b_hh                                     # (B, 4H), stacked i, f, g, o
    i, f, g, o = gates.chunk(4, dim=1)                                 # 4 x (B, H)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c = f * c + i * g
    h = o * torch.tanh(c)
    return h, c


# 2c. The GRU: two gates and no separate cell state; h itself is interpolated between old and new.
#   r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)          reset gate: how much of h the candidate sees
#   z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)          update gate: how much of the old h to keep
#   n = tanh(W_in x + b_in + r * (W_hn h + b_hn))       candidate state
#   h' = (1 - z) * n + z * h
# Stacked in torch's order: W_ih = [W_ir; W_iz; W_in] (3H x I), W_hh = [W_hr; W_hz; W_hn] (3H x H).
# Note r multiplies W_hn h + b_hn, after the product: that is torch's (and cuDNN's) variant.

def gru_cell(xw, h, w_hh, b_hh):
    """xw: (B, 3H) = W_ih x + b_ih; h: (B, H). Returns h' (B, H)."""
    x_r, x_z, x_n = xw.chunk(3, dim=1)                                 # 3 x (B, H)
    h_r, h_z, h_n = (h @ w_hh.T + b_hh).chunk(3, dim=1)                # 3 x (B, H)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h


CELLS = {"rnn": rnn_cell, "lstm": lstm_cell, "gru": gru_cell}


# -----------------------------------------------------------------------------
# 3. Backpropagation through time, by hand
# -----------------------------------------------------------------------------
# Training calls loss.backward() and lets autograd find the gradients. Here is what it computes, for
# one layer of the vanilla RNN over one chunk. Unrolled over the chunk's T steps, the RNN is a
# T-layer network whose layers all share the same weights:
#   a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh,    h_t = tanh(a_t),    t = 1..T, from the carried h_0
# We write dv for dL/dv, the gradient of the loss L with respect to v. h_t reaches the loss by two roads,
# and its total gradient dh_t is the sum of the two parts:
#   dh_t = dh_out_t + dh_next
# dh_out_t is the direct part: what the read-out at step t (or the layer above) hands back. dh_next is
# the part that comes through h_{t+1}, so through every later step; it is zero after the last step.
# It is known only once step t + 1 is done, so we walk backward from the last step.
# In the code's layout (rows are batch items, section 2) one step is a_t = x_t W_ih^T + h_{t-1} W_hh^T + b.
# For a product Y = X W^T, Y[b, i] = sum over j of X[b, j] W[i, j]. W[i, j] moves every Y[b, i] with
# slope X[b, j], so dW[i, j] = sum over b of dY[b, i] X[b, j]: dW = dY^T X. X[b, j] moves Y[b, i] for
# every i with slope W[i, j], so dX[b, j] = sum over i of dY[b, i] W[i, j]: dX = dY W.
# With Y = a_t and X = h_{t-1}, that gives dW_hh = da_t^T h_{t-1} and dh_{t-1} = da_t W_hh (through a_t).
# So at each step t = T..1:
#   dh_t    = dh_out_t + dh_next                      the total gradient for h_t
#   da_t    = dh_t * (1 - h_t^2)                      tanh'(a) = 1 - tanh(a)^2 = 1 - h_t^2
#   dW_hh  += da_t^T h_{t-1},   db_hh += da_t summed over the batch   (one W_hh at every step: sum)
#   dh_next = da_t W_hh                               the part of dh_{t-1} that comes through h_t
# The input half was one product over all steps, and so is its gradient, after the walk:
#   dx = da W_ih,   dW_ih = sum over t of da_t^T x_t,   db_ih = da summed over batch and time.
# dx goes down to what produced x: the layer below (as its dh_out), or, for the first layer, the rows
# of the embedding table that were read.
# After step 1, dh_next is dh_0: the gradient for the state carried in from the previous chunk.
# Truncated backpropagation through time simply stops this walk at the chunk's edge: dh_0 is dropped
# (detach_hidden, section 4a), so a chunk's loss never reaches the steps of earlier chunks.
# Each step back multiplies the gradient by diag(1 - h^2) and W_hh: over many steps it shrinks or
# grows geometrically. Clipping (section 5a) caps the growth. Along the LSTM's cell state the gradient
# shrinks only by the factor f at each step, and hardly at all where f is near 1 (section 2b).
# The code counts steps from 0: its loop index t is step t + 1 of the math, and hs[t] is h_t.

@torch.no_grad()  # by hand: autograd is not used here
def rnn_bptt(x, h0, w_ih, b_ih, w_hh, b_hh, dh_out):
    """One vanilla RNN layer over one chunk: forward, then backward by hand.
    x: (B, T, I) inputs; h0: (B, H) the carried state; dh_out: (B, T, H) the direct part dh_out_t of
    dL/dh_t at every step, handed back by the read-out (or the layer above).
    Returns the gradients (dx, dw_ih, db_ih, dw_hh, db_hh, dh0), shaped like x, the weights and h0."""
    T = x.size(1)
    xw = x @ w_ih.T + b_ih                                             # (B, T, H)
    hs = [h0]                                                          # hs[t] = h_t: the walk needs them all
    for t in range(T):                                                 # forward, keeping every h
        hs.append(rnn_cell(xw[:, t], hs[t], w_hh, b_hh))               # (B, H)
    da = torch.empty_like(xw)                                          # (B, T, H): dL/da_t, every step
    dw_hh, db_hh = torch.zeros_like(w_hh), torch.zeros_like(b_hh)      # (H, H), (H,)
    dh_next = torch.zeros_like(h0)                                     # (B, H): nothing after the last step
    for t in reversed(range(T)):                                       # steps T..1 (this t is step t + 1)
        h, h_prev = hs[t + 1], hs[t]
        dh_t = dh_out[:, t] + dh_next                                  # (B, H)  dh_t = dh_out_t + dh_next
        da_t = dh_t * (1 - h ** 2)                                     # (B, H)  da_t = dh_t * tanh'(a_t)
        dw_hh += da_t.T @ h_prev                                       # (H, H)  dW_hh += da_t^T h_{t-1}
        db_hh += da_t.sum(0)                                           # (H,)
        dh_next = da_t @ w_hh                                          # (B, H)  the part of dh_{t-1} through h_t
        da[:, t] = da_t
    dx = da @ w_ih                                                     # (B, T, I)
    dw_ih = da.flatten(0, 1).T @ x.flatten(0, 1)                       # (H, I)  sum over t of da_t^T x_t
    db_ih = da.sum((0, 1))                                             # (H,)
    return dx, dw_ih, db_ih, dw_hh, db_hh, dh_next                     # dh_next is now dh_0


# nn.RNN's backward (autograd through its fused kernel) performs this same walk. check_bptt runs both on
# one random chunk and returns the largest difference in each gradient: rounding only, ~1e-15 in float64
# (tests/test_char_rnn.py::test_bptt_by_hand_matches_autograd holds them under 1e-10). Try it:
#   python -c "import char_rnn; print(char_rnn.check_bptt())"

def check_bptt(B=3, T=6, I=4, H=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    rnn = nn.RNN(I, H, batch_first=True).double()
    x, h0, dh_out = (torch.randn(*shape, generator=g, dtype=torch.float64) for shape in ((B, T, I), (B, H), (B, T, H)))
    x.requires_grad_(), h0.requires_grad_()
    out, _ = rnn(x, h0[None])
    (out * dh_out).sum().backward()                  # a loss whose dL/dh_t is dh_out_t: autograd's walk
    by_autograd = (x.grad, rnn.weight_ih_l0.grad, rnn.bias_ih_l0.grad, rnn.weight_hh_l0.grad, rnn.bias_hh_l0.grad,
                   h0.grad)
    by_hand = rnn_bptt(x, h0, rnn.weight_ih_l0, rnn.bias_ih_l0, rnn.weight_hh_l0, rnn.bias_hh_l0, dh_out)
    names = ("dx", "dw_ih", "db_ih", "dw_hh", "db_hh", "dh0")
    return {n: (a - b).abs().max().item() for n, a, b in zip(names, by_hand, by_autograd, strict=True)}


# -----------------------------------------------------------------------------
# 4. The model
# -----------------------------------------------------------------------------
# 4a. A stack of cells, run over time. The first layer reads the character embeddings: the embedding is
# a learned table with one H-vector per character, and character i reads row i. Layer l reads the
# outputs h of layer l - 1 at every step. The hidden state has torch's shape: (n_layer, B, H) for the RNN and
# the GRU, a pair (h, c) of those for the LSTM.
# Dropout (--dropout=p), between layers here and before the read-out in 4b: in training, zero a random
# fraction p of the activations and scale the rest by 1/(1 - p), so their expected value is unchanged;
# in eval mode it does nothing. No unit can count on another being there, which fights overfitting.

def run_scratch(cell, module, x, hidden=None):
    """Our cells over x (B, T, I), with the parameters of the torch module `module` (nn.RNN, nn.LSTM or nn.GRU).
    Computes the same as module(x, hidden): returns (outputs of the last layer (B, T, H), new hidden)."""
    B, T, _ = x.shape
    n_layer, H = module.num_layers, module.hidden_size
    if hidden is None:
        hidden = zero_hidden(cell, n_layer, B, H, x)
    step = CELLS[cell]                                 # rnn_cell, lstm_cell or gru_cell
    final_states = []                                  # each layer's state after the last step
    for l in range(n_layer):
        w_ih, w_hh, b_ih, b_hh = (getattr(module, f"{name}_l{l}")
                                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
        xw = x @ w_ih.T + b_ih                         # (B, T, G*H): the input half, every step at once
        state = (hidden[0][l], hidden[1][l]) if cell == "lstm" else hidden[l]
        outs = []
        for t in range(T):
            state = step(xw[:, t], state, w_hh, b_hh)
            outs.append(state[0] if cell == "lstm" else state)        # (B, H)
        x = torch.stack(outs, dim=1)                                   # (B, T, H)
        if l < n_layer - 1:                                                  # torch drops out between layers
            x = F.dropout(x, module.dropout, module.training)
        final_states.append(state)
    if cell == "lstm":
        return x, (torch.stack([s[0] for s in final_states]), torch.stack([s[1] for s in final_states]))
    return x, torch.stack(final_states)                                # (n_layer, B, H)


def zero_hidden(cell, n_layer, B, H, like):
    h = like.new_zeros(n_layer, B, H)
    return (h, h.clone()) if cell == "lstm" else h


def detach_hidden(hidden):
    """Keep the values, cut the graph: backpropagation through time stops at the chunk's edge."""
    if hidden is None:
        return None
    return tuple(h.detach() for h in hidden) if isinstance(hidden, tuple) else hidden.detach()


# 4b. The model: character embedding -> n_layer recurrent layers -> dropout -> linear read-out.
# The read-out maps each position's top-layer h (H) to V logits, one score per character of the
# vocabulary; softmax turns them into probabilities, p_i = e^{logit_i} / sum over j of e^{logit_j}.
# The parameters of the recurrent layers live in torch's nn.RNN / nn.LSTM / nn.GRU module, named
# weight_ih_l0, weight_hh_l0, bias_ih_l0, bias_hh_l0, ... . With --impl=fused we call that module;
# with --impl=scratch, run_scratch reads the same tensors. Switching impl changes no parameter, so a
# checkpoint trained with one samples with the other.

# 4c. The loss (the last lines of forward): loss = -mean over positions of log p(next character | the
# characters up to it), with p = softmax(logits). Its gradient, where backpropagation starts, is simply
#   dL/dlogits = (softmax(logits) - onehot(y)) / (B * T)
# at each position: push up the right character's logit, the others down in proportion to p.
# From there it flows into the read-out, then into dh_out of section 3, then back through time.

class CharRNN(nn.Module):
    def __init__(self, cfg, vocab_size):
        super().__init__()
        self.cell, self.impl = cfg.cell, cfg.impl
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)  # the embedding table (V, H); checkpoints use this name
        module = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cfg.cell]
        # torch applies its dropout between layers only, and warns if there is a single layer
        self.rnn = module(cfg.n_embd, cfg.n_embd, cfg.n_layer, batch_first=True,
                          dropout=cfg.dropout if cfg.n_layer > 1 else 0.0)
        self.drop = nn.Dropout(cfg.dropout)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size)
        if cfg.cell == "lstm":
            # A forget-gate bias of 1 makes the untrained LSTM keep more of its cell state: f = sigmoid(1) = 0.73
            # instead of about sigmoid(0) = 0.5 (torch's default biases are small random values, not 0), so a
            # memory halves in about 2.2 steps instead of 1. Training does the rest.
            H = cfg.n_embd
            with torch.no_grad():
                for l in range(cfg.n_layer):
                    getattr(self.rnn, f"bias_hh_l{l}")[H: 2 * H] = 1.0
                    getattr(self.rnn, f"bias_ih_l{l}")[H: 2 * H] = 0.0

    def forward(self, idx, targets=None, hidden=None):
        """idx: (B, T) ids. Returns logits (B, T, V), the mean cross-entropy given targets (else None),
        and the hidden state after the last character, to carry into the next chunk."""
        x = self.wte(idx)                                                     # (B, T, H)
        if self.impl == "fused":
            out, hidden = self.rnn(x, hidden)                                 # (B, T, H)
        else:
            out, hidden = run_scratch(self.cell, self.rnn, x, hidden)         # (B, T, H)
        logits = self.lm_head(self.drop(out))                                 # (B, T, V)
        if targets is None:
            return logits, None, hidden
        B, T = idx.shape
        loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss, hidden


# Copied from char_gpt.py
def count_params(model):
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


# Aside: what --impl=fused runs. cuDNN on a GPU. On a CPU (torch.profiler, torch 2.13, float32), the LSTM
# is one oneDNN kernel per layer (aten::mkldnn_rnn_layer, and its backward), but the GRU and the vanilla
# RNN run ATen's C++ loop over time: a matrix product and the gate functions at every step, the same
# small ops as ours without Python between them. Fused is the default: on one CPU thread it trains the
# LSTM 3.9x as fast as our loop, the GRU and the vanilla RNN 1.7x as fast (README, "Results";
# benchmarks/bench_char_rnn.py). Read scratch, run fused.


# -----------------------------------------------------------------------------
# 5. Training
# -----------------------------------------------------------------------------
# 5a. One step of gradient descent on one chunk. The model starts from the hidden state the previous
# chunk ended with; the caller detaches it (truncated backpropagation through time, section 3), so the
# graph and the memory stay one chunk long. Then backward, clip, update.
# Clipping: if the norm of the whole gradient (every parameter's, as one long vector g) exceeds c =
# grad_clip, rescale it: g <- g * min(1, c / ||g||). The direction is kept, only a rare huge step (an
# exploding gradient, section 2a) is shortened.

def train_step(model, optimizers, x, y, hidden, lr, grad_clip):
    """One step of gradient descent on one chunk: forward from the carried state, backward, clip, update.
    Returns the loss and the hidden state after the chunk."""
    _, loss, hidden = model(x, y, hidden)
    loss.backward()
    if grad_clip > 0:  # rescale the whole gradient if its norm exceeds grad_clip: no single huge step
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss, hidden


# 5b. The optimizer: AdamW, for every parameter p with gradient g, at step k = 1, 2, ...
#   m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2     running means of g and g^2, from 0
#   m^ = m / (1 - beta1^k),   v^ = v / (1 - beta2^k)                  bias-corrected: undo the pull toward 0
#   p = p - lr (m^ / (sqrt(v^) + eps) + weight_decay p)
# with beta1 = 0.9, beta2 = 0.99 (torch's default is 0.999: with small batches, a shorter memory of g^2
# adapts faster) and eps = 1e-8. Dividing by sqrt(v^) makes each parameter's step at most about lr,
# whatever the scale of its gradient.
# Weight decay pulls the matrices and the embedding toward 0, never the biases.
# Precision: the parameters and activations are float32 on every device; on a CUDA GPU from Ampere on,
# the matmuls multiply float32 numbers with TF32 (float32's range with a 10-bit mantissa), because
# run(), section 8f, turns it on. The recurrent matmuls are small (batch x hidden) and run one time
# step after another, so a lower precision such as bfloat16 would save little here.

def make_optimizers(model, cfg):
    """[AdamW] for every parameter. A list, so checkpoints have the layout of char_gpt.py, this project's
    Transformer, which may train with two optimizers."""
    groups = [{"params": [p for p in model.parameters() if p.dim() == 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in model.parameters() if p.dim() < 2], "weight_decay": 0.0}]
    # fused: one kernel updates every parameter, instead of a few ops per tensor (CPU and CUDA have it)
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    return [torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.99), fused=fused)]


# 5c. The learning rate: a cosine decay from learning_rate to min_lr as `progress` runs 0 -> 1 over
# the budget (counted in iterations or in seconds, whichever ends first, so a 5-minute run decays
# over 5 minutes), scaled by a linear warm-up over the first warmup_iters steps (section 5b: Adam's
# first m^ and v^ are estimated from only a few gradients, so its first steps should be small):
#   lr = [min_lr + (learning_rate - min_lr) * (1 + cos(pi * progress)) / 2] * min(1, (it + 1) / warmup_iters)

# Copied from char_gpt.py
def get_lr(it, progress, cfg):
    cosine = cfg.min_lr + (cfg.learning_rate - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cosine * min(1.0, (it + 1) / cfg.warmup_iters) if cfg.warmup_iters else cosine


# Copied from char_gpt.py
def budget_progress(it, elapsed, cfg):
    by_iters = it / cfg.max_iters if cfg.max_iters else 0.0
    by_time = elapsed / cfg.max_seconds if cfg.max_seconds else 0.0
    return max(by_iters, by_time)


# 5d. Evaluation: the loss on text the model is not trained on (val) tells whether it generalises; the
# same on training text (train) tells whether it is still learning. train() (section 5e) runs it every
# eval_interval iterations.

@torch.no_grad()
def estimate_loss(model, splits, cfg):
    """Mean loss over the first eval_iters chunks of each split's streams, carrying the hidden state
    from a zero start. The same characters every time and no random numbers drawn, so successive
    evaluations differ only because the model changed, and training's random state is left alone."""
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for name, streams in splits.items():
        hidden, losses = None, []
        for k in range(min(cfg.eval_iters, chunks_per_pass(streams, cfg.block_size))):
            x, y = get_chunk(streams, k, cfg.block_size)
            _, loss, hidden = model(x.to(device), y.to(device), hidden)
            losses.append(loss.item())
        out[name] = sum(losses) / len(losses)
    model.train()
    return out


# The figure to report for a trained model is the loss on the whole val text, every character predicted
# once from all the text before it: the model reads the text as one stream, block_size characters at a
# time, carrying its hidden state from each piece to the next.
# Units: the loss is in nats (natural log). Divided by ln 2 it is in bits per character (bpc), the unit
# of the char-rnn write-ups and the enwik8 tables; e^loss is the perplexity, the number of equally likely
# characters the model is as unsure as.

@torch.no_grad()
def evaluate_text(model, data, block_size, device):
    """Mean loss (nats) over characters 1..N-1 of data, each predicted from all the characters before it."""
    model.eval()
    N, hidden, total = len(data), None, 0.0
    for s in range(0, N - 1, block_size):
        end = min(s + block_size, N - 1)
        x = data[s:end].long()[None].to(device)               # (1, <= T)
        y = data[s + 1:end + 1].long()[None].to(device)
        logits, _, hidden = model(x, None, hidden)
        total += F.cross_entropy(logits[0], y[0], reduction="sum").item()
    model.train()
    return total / (N - 1)


# 5e. The training loop. Each iteration reads the next chunk of every stream, starting from the hidden
# state the previous chunk ended with, detached: truncated backpropagation through time, so the graph and
# the memory stay one chunk long (section 3). After the last chunk that fits, a new pass over the text
# starts from a zero state. Every eval_interval iterations, and when the budget is spent, estimate the
# losses on both splits. The budget counts training seconds: the time of the steps, not of the
# evaluations. `books` (section 8e) keeps the run's books, in two calls: `evaluated` prints and logs the
# losses and saves a checkpoint (with the stream position and hidden state, so a resumed run reads on
# from there); `stepped` prints a progress line every log_interval iterations and says whether to stop
# early (Ctrl-C); it hands back the training seconds with the wait for loss.item() on a GPU added.
# Delete those two lines, start from 0 (it, seconds = 0, 0.0; chunk, hidden = 0, None), and this still
# trains. A resumed run starts from the iteration, seconds, chunk and hidden state its checkpoint holds.

def train(model, optimizers, splits, cfg, books):
    """Train until the budget is spent or a stop is asked for. splits: {"train": streams, "val": streams}."""
    device = next(model.parameters()).device
    n_chunks = chunks_per_pass(splits["train"], cfg.block_size)
    it, seconds, stop = books.it, books.seconds, False
    chunk, hidden = books.carry["chunk"], books.carry["hidden"]
    while True:
        progress = budget_progress(it, seconds, cfg)
        if it % cfg.eval_interval == 0 or progress >= 1:
            losses = estimate_loss(model, splits, cfg)
            books.evaluated(it, seconds, losses, chunk=chunk, hidden=hidden)
        if progress >= 1 or stop:
            return
        t = time.perf_counter()
        lr = get_lr(it, progress, cfg)
        x, y = get_chunk(splits["train"], chunk, cfg.block_size)
        loss, hidden = train_step(model, optimizers, x.to(device), y.to(device), hidden, lr, cfg.grad_clip)
        chunk, hidden = chunk + 1, detach_hidden(hidden)
        if chunk == n_chunks:                        # the end of a pass: a new one, from a zero state
            chunk, hidden = 0, None
        it, seconds = it + 1, seconds + time.perf_counter() - t
        seconds, stop = books.stepped(it, seconds, loss, lr, progress, chunk=chunk, hidden=hidden)


# -----------------------------------------------------------------------------
# 6. Sampling
# -----------------------------------------------------------------------------
# First run the prompt through the network ("priming"): the hidden state after its last character
# sums up the prompt. Then turn the last logits into probabilities p = softmax(logits / temperature),
# optionally keep only the top_k most likely characters, draw one, feed it in, and repeat. Unlike a
# model that reads a fixed window of past characters, there is no window to outgrow: each new character
# costs one step of the cells, forever.

# Copied from char_gpt.py
def probabilities(logits, temperature, top_k):
    """logits: (B, V) -> p (B, V) on the CPU, in float32: softmax(logits / temperature) over the top_k."""
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]                      # (characters tied with the
        logits = logits.masked_fill(logits < kth, float("-inf"))            # k-th stay in too)
    # The random numbers come from one CPU generator, whatever the model's device: a seed gives the same
    # random numbers on a CPU and a GPU. (The text can still differ: the two compute the logits with
    # different kernels, which round differently in the last bits, and a near tie can then fall the
    # other way.)
    return F.softmax(logits.float(), dim=-1).cpu()


# Copied from char_gpt.py
def sample_next(logits, temperature, top_k, generator=None):
    """logits: (B, V) -> ids (B, 1). temperature 0 means greedy (always the most likely)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = probabilities(logits, temperature, top_k)
    return torch.multinomial(probs, 1, generator=generator).to(logits.device)


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, on_token=None, generator=None):
    """Continue idx (B, T) by max_new_tokens ids. on_token(ids) sees each new (B, 1) step."""
    model.eval()
    logits, _, hidden = model(idx)                           # prime on the whole prompt at once
    for _ in range(max_new_tokens):
        nxt = sample_next(logits[:, -1, :], temperature, top_k, generator)
        idx = torch.cat([idx, nxt], dim=1)
        if on_token:
            on_token(nxt)
        logits, _, hidden = model(nxt, hidden=hidden)        # one character in, one step of the cells
    return idx


# -----------------------------------------------------------------------------
# 7. Making it fast
# -----------------------------------------------------------------------------
# The fused cells (--impl=fused, the aside after 4c) are this chapter's main speed-up. Two more: a big text's
# encoding, and the CPU settings of sampling. The command line (section 8) uses them.
#
# 7a. Encoding a big text. encode() makes a Python list: one 8-byte slot per character, pointing to
# stoi's own int objects, so a 100 MB text would need about 0.8 GB as a list, on top of the Python str.
# encode_text() computes the same ids in NumPy, a slice at a time: each character's code point (its
# UTF-32 value) indexes a lookup table whose entries are the ids. The ids go in the smallest integer type
# that holds them: 1 byte per character for up to 256 characters (int16 holds 32,768, int32 the rest);
# a chunk converts only its own characters to int64 (get_chunk).

# Copied from char_gpt.py
def id_dtype(vocab_size):
    return np.uint8 if vocab_size <= 256 else np.int16 if vocab_size <= 2**15 else np.int32


# Copied from char_gpt.py
def encode_text(text, stoi, slice_chars=2**22):
    """torch.tensor(encode(text, stoi)) in the smallest id type, without a Python int per character."""
    codes = sorted(ord(c) for c in stoi)
    # code point -> id; -1: not in the vocabulary. One slot past the last code point, so np.minimum below
    # can send every larger code point there.
    table = np.full(codes[-1] + 2, -1, dtype=np.int32)
    table[codes] = [stoi[chr(c)] for c in codes]
    ids = np.empty(len(text), dtype=id_dtype(len(stoi)))
    for start in range(0, len(text), slice_chars):
        cp = np.frombuffer(text[start:start + slice_chars].encode("utf-32-le"), dtype=np.uint32)
        part = table[np.minimum(cp, len(table) - 1)]           # a code point past the table reads -1
        if part.min() < 0:
            missing = sorted(set(text) - set(stoi))
            raise UsageError(f"the text has characters the vocabulary lacks: {''.join(missing)!r}")
        ids[start:start + len(part)] = part
    return torch.from_numpy(ids)


# 7b. Sampling's CPU settings, and the sampler the command line and serve.py call: here the plain one.

# Copied from char_gpt.py
SMALL_STEP = 250_000  # parameters: below this, sampling takes one thread


# Copied from char_gpt.py
@contextmanager
def sampling_settings(model):
    """Run the block with the CPU settings that suit one-character steps, then restore them.
    Threads: torch can split one operation over several threads. A small model's step is too small to
    share: the hand-off costs more than the second core saves, so below SMALL_STEP parameters it gets one
    thread; a larger model keeps them all (RESULTS.md, "Sampling", has the crossover on each CPU kind).
    oneDNN off: torch hands some CPU operations (GELU, the fused LSTM) to Intel's oneDNN library
    (torch calls it mkldnn, its old name), whose set-up costs more per call than a one-character step
    through torch's own kernels. The two can round differently in the last bit, so the same seed can,
    rarely, draw another character with and without these settings; the command line and the server both
    use them. (On a GPU neither setting matters.) Both settings are global, for every thread of the
    process: serve.py, whose requests sample in threads at once, enters this once around all its serving."""
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    if sum(p.numel() for p in model.parameters()) < SMALL_STEP:
        torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn


generate_fast = generate  # char_gpt.py has a second, faster form of its sampler; one step of the cells needs none


# -----------------------------------------------------------------------------
# 8. Running it: the command line, checks, checkpoints, the run's books, main. Machinery around the
#    lesson; a reader may skip it.
# -----------------------------------------------------------------------------
# 8a. Configuration: every knob once, its default and its meaning side by side; --help is built from
# them. A default of None means "chosen for the device" (DEVICE_DEFAULTS below).

KIND = "char_rnn"  # written into checkpoints, so char_gpt.py's checkpoints are told apart


# Copied from char_gpt.py
def knob(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # I/O
    input: str = knob("input.txt", "UTF-8 text file to learn from")
    out_dir: str = knob("out/char_rnn", "where ckpt.pt, log.csv, metrics.json and loss.png go")
    device: str = knob("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    seed: int = knob(1337, "random seed (initialisation, dropout, sampling)")
    # how long to train: whichever limit comes first (no limit set: --max_seconds for the device)
    max_iters: int | None = knob(None, "stop after this many iterations")
    max_seconds: float | None = knob(None, "stop after this many seconds of training (evaluation not counted); "
                                           "the learning rate decays over this budget")
    eval_interval: int | None = knob(None, "evaluate train/val loss and save a checkpoint every N iterations")
    eval_iters: int = knob(20, "chunks averaged for each evaluated loss (the first chunks of each split)")
    eval_sample: bool = knob(True, "print a one-line sample (80 characters, fixed seed) at each evaluation")
    log_interval: int = knob(50, "print a progress line every N iterations")
    # data and model
    cell: str = knob("lstm", "the recurrent cell: rnn (vanilla, tanh), lstm or gru (--model is the same flag)")
    impl: str | None = knob(None, "scratch (our cells, a Python loop over time) or fused (torch's "
                                  "nn.RNN/LSTM/GRU kernel): the same function of the same parameters; fused "
                                  "is the faster on cpu and gpu")
    batch_size: int | None = knob(None, "parallel streams through the text")
    block_size: int | None = knob(None, "characters per chunk: backpropagation through time stops at its edge")
    n_layer: int | None = knob(None, "stacked recurrent layers")
    n_embd: int | None = knob(None, "size of the character embedding and of every hidden state")
    dropout: float | None = knob(None, "dropout probability between layers and before the read-out")
    # optimisation
    optimizer: str = knob("adamw", "adamw, the only choice here (char_gpt.py also has muon)")
    learning_rate: float | None = knob(None, "peak learning rate")
    min_lr: float | None = knob(None, "learning rate at the end of the cosine decay")
    warmup_iters: int = knob(100, "iterations of linear warm-up (0: none)")
    weight_decay: float = knob(0.1, "weight decay, applied to weight matrices and embedding tables only")
    grad_clip: float = knob(1.0, "clip the gradient norm to this (0: off)")
    # resuming and sampling
    resume: bool = knob(False, "continue training from out_dir/ckpt.pt (its model shape and optimizer win over "
                               "the flags); a larger budget stretches the cosine over the new budget")
    eval_only: bool = knob(False, "do not train: print the loss of out_dir/ckpt.pt on the whole val split "
                                  "(the last tenth) of --input, every character predicted once")
    sample_only: bool = knob(False, "do not train: load out_dir/ckpt.pt and print samples")
    prompt: str = knob("\n", "text the samples continue (it primes the hidden state)")
    max_new_tokens: int = knob(500, "characters to generate per sample")
    num_samples: int = knob(1, "how many samples to print")
    temperature: float = knob(0.8, "divide the logits by this: < 1 safer, > 1 wilder")
    top_k: int | None = knob(None, "sample only from the k most likely characters (None: all)")


# The defaults of the fields left at None, per device; RESULTS.md has the runs that chose them.
DEVICE_DEFAULTS = {
    "cpu": dict(max_seconds=300, eval_interval=250, impl="fused", batch_size=32, block_size=64, n_layer=1,
                n_embd=256, dropout=0.0, learning_rate=3e-3, min_lr=3e-4),
    "gpu": dict(max_seconds=90, eval_interval=250, impl="fused", batch_size=128, block_size=128, n_layer=3,
                n_embd=512, dropout=0.2, learning_rate=2e-3, min_lr=2e-4),
}
SHAPE = ("cell", "batch_size", "block_size", "n_layer", "n_embd", "dropout", "optimizer")  # a resume keeps these


# Copied from char_gpt.py
class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see --help)")


# Copied from char_gpt.py
def parse_bool(s):
    if s.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
    return s.lower() in ("1", "true", "yes", "on")


def parse_args(argv=None) -> Config:
    """Flags mirror the Config fields: --name=value or --name value; a bare --resume means true."""
    parser = OneLineParser(description=__doc__.split("\n")[0])
    choices = {"cell": tuple(CELLS), "impl": ("scratch", "fused")}
    for f in fields(Config):
        kind = next(t for t in (typing.get_args(f.type) or (f.type,)) if t is not type(None))  # int | None: int
        default = (f"cpu {DEVICE_DEFAULTS['cpu'][f.name]}, gpu {DEVICE_DEFAULTS['gpu'][f.name]}"
                   if f.name in DEVICE_DEFAULTS["cpu"] else repr(f.default))
        extra = dict(type=parse_bool, nargs="?", const=True) if kind is bool else dict(type=kind)
        names = [f"--{f.name}"] + (["--model"] if f.name == "cell" else [])  # --model: the older name
        parser.add_argument(*names, default=f.default, choices=choices.get(f.name),
                            help=f"{f.metadata['help']} (default: {default})", **extra)
    return Config(**vars(parser.parse_args(argv)))


# Copied from char_gpt.py
def pick_device(name):
    if name not in ("auto", "cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise UsageError(f"--device={name} is not one of auto, cpu, cuda, cuda:N, mps")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device={name} but no CUDA GPU is visible: use --device=cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UsageError("--device=mps but MPS is not available: use --device=cpu")
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"


def fill_defaults(cfg: Config, device: str) -> Config:
    """Replace each None by the default for this device, then check every flag before any work starts."""
    defaults = DEVICE_DEFAULTS["cpu" if device.startswith("cpu") else "gpu"]
    for name, value in defaults.items():
        if getattr(cfg, name) is None and name != "max_seconds":
            setattr(cfg, name, value)
    if cfg.max_iters is None and cfg.max_seconds is None:  # --max_iters alone means: no time limit
        cfg.max_seconds = defaults["max_seconds"]
    cfg.min_lr = min(cfg.min_lr, cfg.learning_rate)  # a lowered --learning_rate lowers the floor too
    for name in ("batch_size", "block_size", "n_layer", "n_embd", "eval_interval", "eval_iters", "log_interval"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name}={getattr(cfg, name)} must be at least 1")
    for name in ("max_iters", "max_seconds", "learning_rate"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise UsageError(f"--{name}={getattr(cfg, name)} must be positive")
    if not 0 <= cfg.dropout < 1:
        raise UsageError(f"--dropout={cfg.dropout} must be in [0, 1)")
    if cfg.min_lr < 0:
        raise UsageError(f"--min_lr={cfg.min_lr} must be at least 0")
    if cfg.optimizer != "adamw":
        raise UsageError(f"--optimizer={cfg.optimizer}: {KIND}.py trains with adamw only "
                         "(Muon is char_gpt.py's, tuned for Transformer blocks)")
    check_sample_flags(cfg)
    return cfg


# Copied from char_gpt.py
def check_sample_flags(cfg: Config):
    if cfg.eval_only + cfg.sample_only + cfg.resume > 1:
        raise UsageError("--eval_only, --sample_only and --resume exclude each other: give one")
    if cfg.max_new_tokens < 1 or cfg.num_samples < 1 or cfg.temperature < 0:
        raise UsageError("--max_new_tokens and --num_samples must be at least 1, --temperature at least 0")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise UsageError(f"--top_k={cfg.top_k} must be at least 1")
    if not cfg.prompt:
        raise UsageError("--prompt is empty: the samples need at least one character to start from")


# Copied from char_gpt.py
def check_prompt(prompt, stoi):
    missing = sorted(set(prompt) - set(stoi))
    if missing:
        raise UsageError(f"the prompt has characters the model never saw: {''.join(missing)!r}; "
                         "use characters from the training text")


# 8b. Reading the text, with a one-line error for each way it can fail.

# Copied from char_gpt.py
def read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise UsageError(f"input file {path} not found: pass --input=PATH to a UTF-8 text file") from None
    except IsADirectoryError:
        raise UsageError(f"--input={path} is a directory: pass a UTF-8 text file") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"input file {path} is not UTF-8 text (byte {e.start}): "
                         "convert it, e.g. iconv -t utf-8") from None
    except OSError as e:
        raise UsageError(f"cannot read input file {path} ({e.strerror}): check the path and its permissions") from None
    if not text or text.isspace():
        raise UsageError(f"input file {path} is empty or holds only whitespace: give it some text to learn from")
    return text


def read_data(cfg, itos=None):
    """The text's ids, split 90/10 and each cut into batch_size streams, and its vocabulary (itos: a
    checkpoint's, to resume with)."""
    text = read_text(cfg.input)
    itos = itos or build_vocab(text)
    data = encode_text(text, {c: i for i, c in enumerate(itos)})                         # section 7a
    need = cfg.batch_size * (cfg.block_size + 1)  # one chunk of every stream, plus the targets' extra character
    if len(data) - int(0.9 * len(data)) < need:
        raise UsageError(f"the input has {len(text):,} characters, too short for --batch_size={cfg.batch_size} "
                         f"streams of --block_size={cfg.block_size} (the 10% validation split needs one chunk "
                         f"per stream): use at least {math.ceil(need / 0.1):,} characters or a smaller "
                         "--batch_size or --block_size")
    return [make_streams(split, cfg.batch_size) for split in split_data(data)], itos


# 8c. Checkpoints and outputs. torch.save writes a pickle, and loading an arbitrary pickle can run
# code, so we store only tensors and plain Python values and load with weights_only=True. Every file is
# written to a temporary name and then renamed: the rename is atomic, so a crash mid-write keeps the old one.

# Copied from char_gpt.py
def write_atomically(path, write, mode="w"):
    """write(f) to a temporary file, then rename it to path."""
    with open(path + ".tmp", mode, **({} if "b" in mode else {"newline": ""})) as f:
        write(f)
    os.replace(path + ".tmp", path)


# Copied from char_gpt.py
def load_checkpoint(path):
    if not os.path.exists(path):
        raise UsageError(f"no checkpoint at {path}: train first (python {KIND}.py) or point --out_dir at a run")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if "Unsupported global" in str(e):  # weights_only refused a Python object: unpickling it could run code
            raise UsageError(f"{path} holds Python objects, not only tensors and plain values, and loading "
                             "them could run code: refused; load only checkpoints these scripts wrote") from None
        raise UsageError(f"{path} is not a readable checkpoint (truncated or damaged?): "
                         "delete it and train again") from None
    if not isinstance(ckpt, dict) or ckpt.get("kind") != KIND:
        writer = ckpt.get("kind") if isinstance(ckpt, dict) else None
        writer = f"{writer}.py" if writer else "another program"
        raise UsageError(f"{path} was written by {writer}, not {KIND}.py: point --out_dir at a {KIND} run")
    missing = [key for key in ("config", "itos", "model") if key not in ckpt]
    if missing:
        raise UsageError(f"{path} lacks {', '.join(missing)}: not a whole checkpoint; train again")
    return ckpt


# Copied from char_gpt.py
def prepare_out_dir(out_dir):
    try:
        os.makedirs(out_dir, exist_ok=True)
        write_atomically(os.path.join(out_dir, ".write_test"), lambda f: None)
        os.remove(os.path.join(out_dir, ".write_test"))
    except OSError as e:
        raise UsageError(f"cannot write to --out_dir={out_dir} ({e.strerror}): choose a writable folder") from None


# Copied from char_gpt.py
def write_log(out_dir, history):
    """log.csv, one row per evaluation (losses in nats, then bits per character), and loss.png: rewritten
    at every evaluation, so a run killed at any moment leaves every evaluation made so far."""
    from matplotlib.figure import Figure  # not pyplot: drawing to a file leaves a notebook's plots alone
    rows = [["iter", "train_loss", "val_loss", "elapsed_s", "tokens_per_s", "train_bpc", "val_bpc"]]
    rows += [[*row, round(bpc(row[1]), 4), round(bpc(row[2]), 4)] for row in history]
    write_atomically(os.path.join(out_dir, "log.csv"), lambda f: csv.writer(f).writerows(rows))
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for col, label in ((1, "train"), (2, "val")):
        ax.plot([row[0] for row in history], [row[col] for row in history], label=label)
    ax.set(xlabel="iteration", ylabel="loss (nats per character)", title=f"{KIND}: loss")
    ax.legend()
    fig.tight_layout()
    write_atomically(os.path.join(out_dir, "loss.png"), lambda f: fig.savefig(f, dpi=100, format="png"), "wb")


# Copied from char_gpt.py
def bpc(loss):
    return loss / math.log(2)


# 8e. The books, kept beside the loop of section 5e: the iteration count and training seconds, the losses
# (log.csv, loss.png), checkpoints, progress lines, and stopping. The first Ctrl-C (SIGINT), or the SIGTERM
# a job scheduler sends, only asks to stop: the loop finishes its step, and finish() saves. Cut mid-step, a
# checkpoint could hold a model the optimizer has half updated. A second Ctrl-C stops
# at once; the last checkpoint written stays as it was. A checkpoint continues exactly where the run was: on
# a CPU bit for bit (the CPU's random state is saved; a GPU's is not, so there dropout draws afresh).

# Copied from char_gpt.py
class Books:
    def __init__(self, cfg, model, optimizers, itos, ckpt=None, say=print, rank=0, world=1, **carry):
        self.cfg, self.model, self.optimizers, self.itos = cfg, model, optimizers, itos
        self.rank, self.world = rank, world
        self.say = say if rank == 0 else (lambda *a, **k: None)              # one process talks
        self.carry = carry  # what else the loop carries from step to step, saved with each checkpoint
        self.device = next(model.parameters()).device
        self.path = os.path.join(cfg.out_dir, "ckpt.pt")
        self.it, self.seconds, self.history, self.best_val, self.stop = 0, 0.0, [], float("inf"), False
        if ckpt:  # the model's weights, the optimizers' states, the random state, the books so far
            model.load_state_dict(ckpt["model"])
            for opt, state in zip(optimizers, ckpt["optimizers"], strict=True):
                opt.load_state_dict(state)
            self.it, self.seconds, self.best_val = ckpt["iter"], ckpt["train_seconds"], ckpt["best_val_loss"]
            self.history = [tuple(r) for r in ckpt["history"]]
            torch.set_rng_state(ckpt["rng"])
            if budget_progress(self.it, self.seconds, cfg) >= 1:
                raise UsageError(f"the checkpoint has already trained {self.it} iterations ({self.seconds:.0f} s), "
                                 "the whole budget: raise --max_iters or --max_seconds to train more")
        self.start, self.last = (self.it, self.seconds), (self.it, self.seconds)  # at the start, at the last line
        self.tokens_per_iter, self.tokens_per_s = cfg.batch_size * cfg.block_size * world, 0.0

    def evaluated(self, it, seconds, losses, **carry):
        """Print the losses and a one-line sample, log them, save a checkpoint."""
        if not math.isfinite(losses["val"]):  # stop before a NaN reaches a checkpoint: the last good one stays
            raise UsageError(f"the loss became {losses['val']} at iteration {it}: lower --learning_rate or keep "
                             "--grad_clip on")
        self.it, self.seconds, self.best_val = it, seconds, min(self.best_val, losses["val"])
        self.carry.update(carry)
        self.history = [r for r in self.history if r[0] != it]   # a resumed run evaluates its first step again
        self.history.append((it, round(losses["train"], 4), round(losses["val"], 4), round(seconds, 1),
                             round(self.tokens_per_s)))
        self.say(f"eval iter {it}: train loss {losses['train']:.4f} ({bpc(losses['train']):.3f} bpc), "
                 f"val loss {losses['val']:.4f} ({bpc(losses['val']):.3f} bpc)")
        if self.cfg.eval_sample and self.rank == 0:
            self.say(f"  sample: {sample_line(self.model, self.itos)}")
        self.save()
        if self.rank == 0:
            write_log(self.cfg.out_dir, self.history)
        self.last = (it, seconds)

    def stepped(self, it, seconds, loss, lr, progress, **carry):
        """A progress line every log_interval iterations. Returns the training seconds (under torchrun,
        rank 0's, so every process follows one schedule) and whether to stop (any process was asked to)."""
        self.it, self.seconds = it, seconds
        self.carry.update(carry)
        if it % self.cfg.log_interval == 0:
            t = time.perf_counter()
            lossf = loss.item()  # on a GPU this waits for the step: only every log_interval
            if not math.isfinite(lossf):
                raise UsageError(f"the loss became {lossf} at iteration {it}: lower --learning_rate or keep "
                                 "--grad_clip on")
            seconds += time.perf_counter() - t  # the wait was the steps' own time
            dt = (seconds - self.last[1]) / (it - self.last[0])
            self.last, self.tokens_per_s = (it, seconds), self.tokens_per_iter / dt
            left = seconds / progress - seconds if progress > 0 else 0.0
            self.say(f"iter {it} | loss {lossf:.4f} | {dt * 1000:.1f} ms/iter | {self.tokens_per_s:,.0f} tok/s"
                     f"{mfu(self.model, self.cfg, self.tokens_per_s / self.world)} | lr {lr:.2e} | "
                     f"{int(left // 60)}m{int(left % 60):02d}s left")
        if self.world > 1:  # one collective: rank 0's seconds (the others add 0) and the stop requests
            both = torch.tensor([seconds if self.rank == 0 else 0.0, float(self.stop)], device=self.device)
            torch.distributed.all_reduce(both)
            seconds, stop = both[0].item(), both[1].item() > 0
            return seconds, stop
        return seconds, self.stop

    def save(self):
        if self.rank == 0:
            write_atomically(self.path, lambda f: torch.save({
                "kind": KIND, "config": asdict(self.cfg), "itos": self.itos, "iter": self.it,
                "best_val_loss": self.best_val, "model": self.model.state_dict(),
                "optimizers": [opt.state_dict() for opt in self.optimizers], "rng": torch.get_rng_state(),
                "history": self.history, "train_seconds": self.seconds,
                **{k: v.get_state() if isinstance(v, torch.Generator) else v for k, v in self.carry.items()}}, f), "wb")

    @contextmanager
    def signals(self):
        """Around the loop: Ctrl-C and SIGTERM ask to stop; torchrun's process group is closed at the end."""
        def ask_to_stop(signum, frame):
            if self.stop:
                raise KeyboardInterrupt
            self.stop = True  # (no print here: the handler may run in the middle of another print)
        handlers = {}
        if threading.current_thread() is threading.main_thread():  # only the main thread may set handlers
            handlers = {sig: signal.signal(sig, ask_to_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        except KeyboardInterrupt:
            self.say(f"\nstopped at once at iteration {self.it}: the last checkpoint saved is kept")
            raise
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
            if self.world > 1:
                torch.distributed.destroy_process_group()

    def finish(self, n_params):
        """Stopped early: save and say how to go on. Done: metrics.json. Returns what the caller samples from."""
        result = {"model": self.model, "itos": self.itos, "device": str(self.device), "history": self.history,
                  "rank": self.rank, "stopped": self.stop}
        if self.stop:
            self.save()
            self.say(f"stopped at iteration {self.it}: checkpoint saved to {self.path} (continue with --resume)")
            return result
        this_run = self.seconds - self.start[1]
        result["metrics"] = metrics = {
            "best_val_loss": self.best_val, "best_val_bpc": round(bpc(self.best_val), 4),
            "final_val_loss": self.history[-1][2], "iters": self.it, "train_seconds": round(self.seconds, 1),
            "tokens_per_second": round((self.it - self.start[0]) * self.tokens_per_iter / max(this_run, 1e-9)),
            "params": n_params, "device": str(self.device), "config": asdict(self.cfg)}
        if self.rank == 0:
            write_atomically(os.path.join(self.cfg.out_dir, "metrics.json"),
                             lambda f: json.dump(metrics, f, indent=2))
            self.say(f"best val loss {self.best_val:.4f} ({bpc(self.best_val):.3f} bpc); wrote "
                     f"{self.cfg.out_dir}/ckpt.pt, log.csv, metrics.json, loss.png")
        return result


def mfu(model, cfg, tokens_per_s):
    return ""  # (char_gpt.py's progress line adds the GPU's FLOPs utilisation here)


# Copied from char_gpt.py
def sample_line(model, itos, n=80):
    """n characters from the model (seed 0, temperature 0.8), line breaks shown as " / ": one line, so an
    evaluation's losses and its sample stand together in the log. The model is put back in training mode."""
    stoi = {c: i for i, c in enumerate(itos)}
    idx = torch.tensor([encode("\n" if "\n" in stoi else itos[0], stoi)], device=next(model.parameters()).device)
    with sampling_settings(model):
        out = generate_fast(model, idx, n, temperature=0.8, generator=torch.Generator().manual_seed(0))
    model.train()
    return decode(out[0, 1:].tolist(), itos).replace("\n", " / ")


# 8f. A run: the device, a fresh start or a checkpoint's model and optimizers with this run's budget and
# logging, then the lesson's pieces, wired together and handed to train().

def run(cfg, quiet=False):
    """Train as cfg says. Returns a dict: model, itos, device, history (rows of log.csv), metrics, stopped."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        raise UsageError(f"{KIND}.py runs in one process: start it with python, not torchrun")
    device = pick_device(cfg.device)
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    ckpt = load_checkpoint(path) if cfg.resume else None
    if ckpt and "optimizers" not in ckpt:  # an older layout: one optimizer state, not a list
        raise UsageError(f"{path} comes from an older {KIND}.py and cannot be resumed: train again with another "
                         "--out_dir (--sample_only still works on this one)")
    for name in SHAPE if ckpt else ():
        setattr(cfg, name, with_new_names(ckpt["config"])[name])
    cfg = fill_defaults(cfg, device)
    prepare_out_dir(cfg.out_dir)
    try:
        (train_streams, val_streams), itos = read_data(cfg, ckpt and ckpt["itos"])
    except UsageError as e:
        raise UsageError(f"{cfg.input}: {e}; resume on the text it was trained on" if ckpt else str(e)) from None
    check_prompt(cfg.prompt, {c: i for i, c in enumerate(itos)})  # the sample comes after training: fail now

    torch.manual_seed(cfg.seed)
    model = CharRNN(cfg, len(itos)).to(device)
    optimizers = make_optimizers(model, cfg)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32: float32's range with a 10-bit mantissa
        torch.backends.cudnn.allow_tf32 = True
    say = (lambda *a, **k: None) if quiet else print
    books = Books(cfg, model, optimizers, itos, ckpt, say, chunk=0, hidden=None)
    if ckpt:
        books.carry.update(chunk=ckpt["chunk"], hidden=hidden_to(ckpt["hidden"], device))
    books.say(f"{KIND}: {cfg.cell} ({cfg.impl}), {count_params(model):,} parameters, vocabulary {len(itos)}, "
              f"{train_streams.numel():,} training characters, device {device}; float32: {KIND}.py trains in "
              "float32 (TF32 matmuls on GPUs from Ampere on)")
    with books.signals():
        train(model, optimizers, {"train": train_streams, "val": val_streams}, cfg, books)
    return books.finish(count_params(model))


# 8g. Sampling and evaluating a checkpoint, and main.

def with_new_names(config):
    """A checkpoint's config with today's names: --cell was called --model."""
    return {"cell": config["model"], **config} if "model" in config and "cell" not in config else config


def load_model(out_dir, device="cpu", impl=None, ckpt=None):
    """The trained model and its vocabulary from out_dir/ckpt.pt (impl: override the one it trained with;
    ckpt: that file, if already read)."""
    ckpt = ckpt or load_checkpoint(os.path.join(out_dir, "ckpt.pt"))
    config = with_new_names(ckpt["config"])
    cfg = Config(**{k: v for k, v in config.items() if k in {f.name for f in fields(Config)}})
    cfg.impl = impl or cfg.impl
    model = CharRNN(cfg, len(ckpt["itos"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # missing or unexpected weights, or a shape that is not the config's
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UsageError(f"{out_dir}/ckpt.pt does not fit its own config ({first.rstrip('.')}): train again") from None
    return model.to(device).eval(), ckpt["itos"]


def hidden_to(hidden, device):
    if hidden is None:
        return None
    return tuple(h.to(device) for h in hidden) if isinstance(hidden, tuple) else hidden.to(device)


# Copied from char_gpt.py
def print_samples(model, itos, cfg, device):
    stoi = {c: i for i, c in enumerate(itos)}
    check_prompt(cfg.prompt, stoi)
    g = torch.Generator().manual_seed(cfg.seed)
    for i in range(cfg.num_samples):
        print(f"--- sample {i + 1} ---" if cfg.num_samples > 1 else "--- sample ---")
        print(cfg.prompt, end="", flush=True)
        idx = torch.tensor([encode(cfg.prompt, stoi)], device=device)
        with sampling_settings(model):
            generate_fast(model, idx, cfg.max_new_tokens, cfg.temperature, cfg.top_k,
                          on_token=lambda t: print(itos[t.item()], end="", flush=True), generator=g)
        print()


def evaluate_checkpoint(cfg):
    """--eval_only: the checkpoint's loss on the whole val split of --input, in nats, bits and perplexity."""
    device = pick_device(cfg.device)
    model, itos = load_model(cfg.out_dir, device, cfg.impl)
    try:
        data = encode_text(read_text(cfg.input), {c: i for i, c in enumerate(itos)})
    except UsageError as e:
        raise UsageError(f"{cfg.input}: {e}; evaluate on a text with the training text's characters") from None
    val = data[int(0.9 * len(data)):]
    if len(val) < 2:
        raise UsageError(f"{cfg.input} is too short: its last 10% must hold at least 2 characters")
    loss = evaluate_text(model, val, 256, device)  # any piece length gives the same loss: the state is carried
    print(f"val loss {loss:.4f} nats/char, {bpc(loss):.4f} bits/char, perplexity {math.exp(loss):.3f}, "
          f"over {len(val) - 1:,} characters of {cfg.input} (the last 10%, each predicted once)")


# Copied from char_gpt.py
MIN_TORCH = (2, 4)  # the oldest torch this file was tested with (requirements.txt says the same)


def main(argv=None):
    """Check the torch version, read the flags, train (or only evaluate or sample), then sample."""
    if tuple(int(part) for part in torch.__version__.split(".")[:2]) < MIN_TORCH:
        need = ".".join(map(str, MIN_TORCH))
        raise UsageError(f"{KIND}.py needs torch >= {need}, this is torch {torch.__version__}: "
                         f"pip install 'torch>={need}'")
    if "--serve" in (sys.argv[1:] if argv is None else argv):
        raise UsageError(f"serving has its own file: python serve.py --out_dir out/{KIND}")
    cfg = parse_args(argv)
    check_sample_flags(cfg)
    if cfg.eval_only:
        return evaluate_checkpoint(cfg)
    if cfg.sample_only:
        device = pick_device(cfg.device)
        model, itos = load_model(cfg.out_dir, device, cfg.impl)
        return print_samples(model, itos, cfg, device)
    result = run(cfg)
    if result["stopped"]:
        sys.exit(130)
    if result["rank"] == 0:
        print_samples(result["model"], result["itos"], cfg, result["device"])


if __name__ == "__main__":
    try:
        main()
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
