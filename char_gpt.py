"""char_gpt.py: a character-level GPT, written to be read top to bottom.

What you will learn, in this order:
  1. data: a vocabulary of characters, encode/decode, a 90/10 train/val split, random windows;
  2. the model: self-attention written out as softmax(QK^T / sqrt(d_k) + mask) V, then the fused kernel
     that computes the same thing; multi-head attention, the feed-forward net, a Transformer block, and
     the GPT that stacks them;
  3. training: a learning rate that warms up and then decays over a time budget, precision, AdamW and
     Muon written out, one training step, evaluation, and the training loop;
  4. sampling: temperature, top-k, and a key/value cache so each new character costs one step;
  5. making it fast: the same ideas in their quick forms (a big text's encoding, the precision this
     hardware runs natively, a lean sampling step), each tested against the plain form;
  6. running it: the command line, checks, checkpoints that survive a crash or Ctrl-C, the run's books.
     Machinery; skip it on a first read.
`cfg` below is a Config (section 6a): n_layer, n_head, n_embd (the width C), block_size (the context T),
dropout, batch_size, and the training knobs, with their defaults and meanings side by side.

Run it:
  python char_gpt.py                                  # train on input.txt, then print a sample
  python char_gpt.py --max_seconds=60                 # a one-minute run
  python char_gpt.py --sample_only --prompt="ROMEO:"  # sample from the last checkpoint
  python char_gpt.py --eval_only                      # its loss on the whole val split (nats, bits)
  python serve.py --out_dir out/char_gpt              # serve it: a page and an API
  torchrun --standalone --nproc_per_node=2 char_gpt.py   # several processes (DDP)
  python char_gpt.py --help                           # every flag with its default

Outputs go to --out_dir (default out/char_gpt): ckpt.pt, log.csv, metrics.json, loss.png.
"""

import argparse
import csv
import json
import math
import os
import platform
import signal
import sys
import threading
import time
import typing
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class UsageError(Exception):
    """A problem with the input or the flags: reported as one line, without a traceback."""


# -----------------------------------------------------------------------------
# 1. Data
# -----------------------------------------------------------------------------
# A character-level model reads text one character (Unicode code point) at a time. The text is any
# UTF-8 file; the default, input.txt, is 1.1 million characters of Shakespeare's plays. The vocabulary
# is the sorted set of characters in the text (67 in input.txt); a character's id is its index in that
# list. itos ("int to string") is that list; stoi ("string to int") is the dict that inverts it.

def build_vocab(text):
    """The sorted distinct characters of the text: itos, with ids 0..V-1."""
    return sorted(set(text))


def encode(s, stoi):
    return [stoi[c] for c in s]


def decode(ids, itos):
    return "".join(itos[i] for i in ids)


def split_data(data):
    """data: the text's ids, torch.tensor(encode(text, stoi)). The first 90% to train on, the last 10% to
    validate on."""
    n = int(0.9 * len(data))
    return data[:n], data[n:]


# A window of T characters holds T training examples at once: y[t] is the character after x[t] (for the
# last t, the window's next character). The model, which at position t sees only x[0..t] (the causal
# mask, section 2), is asked T next-character questions per window, one per prefix.

def get_batch(data, batch_size, block_size, generator):
    """batch_size random windows of the text; targets are the same windows shifted one to the left."""
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)  # window ix..ix+T
    offsets = torch.arange(block_size + 1)
    windows = data[ix[:, None] + offsets].long()  # (B, T+1), one gather instead of a Python loop
    return windows[:, :-1], windows[:, 1:]       # x: (B, T), y: (B, T)


# -----------------------------------------------------------------------------
# 2. The model
# -----------------------------------------------------------------------------
# 2a. Self-attention, written out once. Shapes below: B sequences in a batch, T positions (characters)
# each, C = n_embd numbers per position, V characters in the vocabulary.
# Each position t carries a vector of C numbers (at the first layer, its character's and its position's
# embeddings, section 2e). From it, it makes a query q_t ("what am I looking for?"), a key k_t ("what do
# I offer?") and a value v_t ("what I pass on"), each a linear map of that vector to d_k numbers. The
# score of t looking at s is q_t . k_s / sqrt(d_k): a dot product of d_k terms that are independent with
# mean 0 (as q and k are, roughly, at initialisation) has d_k times a term's variance, so dividing by
# sqrt(d_k) keeps the scores' variance the same whatever d_k, and the softmax,
# softmax(z)_s = e^z_s / sum_j e^z_j, away from saturation. A causal mask sets the score to -inf for
# s > t (the future), so after the softmax those weights are exactly 0. The output at t is the weighted
# average of the values:
#   out = softmax(Q K^T / sqrt(d_k) + mask) V

def attention(q, k, v):
    """Causal attention in plain tensor ops. q, k, v: (B, nh, T, d_k), where nh is the number of heads
    and d_k the size of one head. Returns (output, weights)."""
    T, d_k = q.size(-2), q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)                        # (B, nh, T, T)
    future = torch.triu(torch.ones(T, T, dtype=torch.bool, device=q.device), diagonal=1)  # s > t
    scores = scores.masked_fill(future, float("-inf"))
    weights = F.softmax(scores, dim=-1)                                      # rows sum to 1
    return weights @ v, weights                                              # (B, nh, T, d_k)


# 2b. Multi-head attention. One matrix, c_attn, makes q, k and v for all heads at once (3 x n_embd
# outputs; the names c_attn, c_proj, c_fc are GPT-2's: "c" for the 1-D convolutions GPT-2 wrote its
# linear maps as). Each head attends in its own d_k = n_embd / n_head dimensions, so heads can look for
# different things; c_proj mixes the heads' outputs back together. (Equations write q = W_Q x for one
# column vector x; nn.Linear computes x @ W.T for a whole batch of row vectors: the same numbers.)
# The fast path calls F.scaled_dot_product_attention, which computes the same formula as `attention` in
# one fused kernel (flash attention on a GPU); a test checks they agree.
# Dropout zeroes a random fraction p of a tensor's numbers while training (and scales the rest by
# 1 / (1 - p)), so the network cannot lean on any single one; model.eval() turns it off. Here it hits the
# attention weights (dropout_p, inside the kernel) and the output of c_proj; `attention` above has none,
# so the two agree in eval mode. `cache` is for sampling (section 4): the keys and values of characters
# already seen, so they are not computed again.

class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head = cfg.n_head
        self.dropout = cfg.dropout
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.resid_drop = nn.Dropout(cfg.dropout)

    def heads(self, x):
        """q, k, v for every head: (B, T, C) -> 3 x (B, nh, T, d_k)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)                             # 3 x (B, T, C)
        # split C into n_head heads of d_k, and move the head axis forward
        return (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

    def merge(self, y):
        """The heads' outputs side by side again, then mixed: (B, nh, T, d_k) -> (B, T, C)."""
        B, nh, T, d_k = y.shape
        return self.resid_drop(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, nh * d_k)))

    def forward(self, x, cache=None):  # (on a first read, skip `cache` until section 4, bfloat16 until 5b)
        q, k, v = self.heads(x)
        if cache is not None:
            k, v = cache.extend(k, v)                                        # (B, nh, T_past + T, d_k)
        # Two cases only. T > 1 queries come with an empty cache (training, or a prompt when sampling):
        # queries and keys start together, the square causal mask of 2a (is_causal). T = 1 is one new
        # character after a cache: it may see every key, so no mask. (Section 4b has the general mask.)
        dropout_p = self.dropout if self.training else 0.0
        if q.is_cpu and q.dtype == torch.bfloat16:   # bfloat16 on a CPU: see float32_attention, section 5b
            y = float32_attention(q, k, v, dropout_p)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=q.size(2) > 1, dropout_p=dropout_p)
        return self.merge(y)


# 2c. The feed-forward net, applied to each position on its own. The Transformer's is
# W2 act(W1 x + b1) + b2: one nonlinearity between two linear maps (not a second one after W2).
# It widens to 4 x n_embd, bends with GELU (a smooth ReLU: x * Phi(x), Phi the normal CDF), and
# narrows back. (GPT-2 used a tanh approximation of Phi; we use the exact erf form, which is faster on
# CPUs with only AVX2.) We leave out the biases b1, b2 (as in every linear map here): they add little
# and cost time.

class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=False)
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.drop(self.c_proj(F.gelu(self.c_fc(x))))


# 2d. A Transformer block. The residual stream is the vector x each position carries from the
# embedding to the output; every block reads it and adds its result back, never replacing it:
#   x = x + attn(ln_1(x));   x = x + mlp(ln_2(x))
# LayerNorm rescales each position's vector to mean 0 and variance 1, then by a learned gain:
#   ln(x) = g * (x - mean(x)) / sqrt(var(x) + eps)
# It comes before each sub-layer (pre-LN, as GPT-2), where the original Transformer put it after the
# sum, x = ln(x + attn(x)): pre-LN leaves the "x +" path from block to block with nothing on it (only the
# final LayerNorm, ln_f, sits at its end, section 2e), so gradients flow straight from the loss to the
# first layer, and deep stacks train without a long warm-up.

class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=False)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_1(x), cache)
        return x + self.mlp(self.ln_2(x))


# 2e. The GPT: token embedding + position embedding -> n_layer blocks -> LayerNorm -> logits.
# An embedding is a learned table: character id i -> row i of wte (V x C), position t -> row t of
# wpe (block_size x C); their sum says what and where each character is. lm_head maps the final
# vectors to one logit per character of the vocabulary (a logit is an unnormalised log-probability:
# softmax turns the V logits into probabilities). It shares its matrix with wte ("weight
# tying"): reading a character in and writing it out use the same vectors, which saves parameters
# and learns faster.

class GPT(nn.Module):
    def __init__(self, cfg, vocab_size):
        super().__init__()
        self.block_size = cfg.block_size
        self.wte = nn.Embedding(vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=False)
        self.lm_head = nn.Linear(cfg.n_embd, vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        # GPT-2 initialisation: weights ~ N(0, std 0.02). Each block adds two outputs to the residual
        # stream, so its variance grows with depth; the projections that write into it start
        # smaller, std 0.02 / sqrt(2 * n_layer), to keep the sum's scale fixed.
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def forward(self, idx, targets=None, caches=None):
        """idx: (B, T) ids. Returns logits (B, T, V) and, given targets, the mean cross-entropy.
        caches (sampling only): one KVCache per block; idx then continues the cached characters."""
        B, T = idx.shape
        start = 0 if caches is None else caches[0].filled                    # characters cached
        if start + T > self.block_size:
            raise ValueError(f"{start + T} positions, but the model knows only block_size={self.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))                          # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, None if caches is None else caches[i])
        logits = self.lm_head(self.ln_f(x))                                   # (B, T, V)
        if targets is None:
            return logits, None
        # loss = -mean over positions of log p(next character | the characters up to it), in nats (natural
        # log; a model that guesses uniformly scores ln V, 4.2 for 67 characters). Its gradient with respect
        # to the logits is (softmax(logits) - onehot(target)) / (B T): push up the right character, push
        # down the others in proportion to how likely the model thought they were.
        loss = F.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss


def count_params(model):
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


# 2f. Looking inside: the attention weights of every layer, from running the blocks by hand with the
# written-out `attention` (the fast kernel does not return its weights).

@torch.no_grad()
def attention_maps(model, idx):
    """For input idx (B, T): a list of n_layer tensors (B, n_head, T, T), row t = where position t looked."""
    was_training = model.training
    model.eval()
    x = model.wte(idx) + model.wpe(torch.arange(idx.size(1), device=idx.device))
    maps = []
    for block in model.blocks:
        y, weights = attention(*block.attn.heads(block.ln_1(x)))
        maps.append(weights)
        x = x + block.attn.merge(y)
        x = x + block.mlp(block.ln_2(x))
    model.train(was_training)
    return maps


# -----------------------------------------------------------------------------
# 3. Training
# -----------------------------------------------------------------------------
# 3a. The learning rate: a cosine decay from learning_rate to min_lr as `progress` runs 0 -> 1 over
# the budget (counted in iterations or in seconds, whichever ends first, so a 5-minute run decays
# over 5 minutes), scaled by a linear warm-up over the first warmup_iters steps (in the first steps the
# optimizer's running averages of the gradient, section 3c, rest on a handful of noisy gradients, so the
# steps they give should be small until the averages settle). With it the number of steps taken so far:
#   lr = [min_lr + (learning_rate - min_lr) * (1 + cos(pi * progress)) / 2] * min(1, (it + 1) / warmup_iters)

def get_lr(it, progress, cfg):
    cosine = cfg.min_lr + (cfg.learning_rate - cfg.min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cosine * min(1.0, (it + 1) / cfg.warmup_iters) if cfg.warmup_iters else cosine


def budget_progress(it, elapsed, cfg):
    by_iters = it / cfg.max_iters if cfg.max_iters else 0.0
    by_time = elapsed / cfg.max_seconds if cfg.max_seconds else 0.0
    return max(by_iters, by_time)


# 3b. Precision. A training step's matmuls can run in bfloat16 (float32's range with 7 mantissa bits
# instead of 23): 2-4x faster where the hardware multiplies it natively (GPUs from Ampere on, CPUs with
# AVX512-BF16 or AMX), and much slower where it has to convert (every other CPU). torch.autocast runs the
# matmuls inside it in the chosen format and leaves the rest alone: the residual stream, its LayerNorms and
# the loss stay in float32. So the step runs under `autocast`, one of
#   torch.autocast(device_type, dtype=torch.bfloat16)   where bfloat16 is native here,
#   nullcontext()                                        (nothing: float32) everywhere else,
# and section 5b reads the hardware to choose (and handles float16, for GPUs older than Ampere).

# 3c. The optimizers. AdamW, for every number p of the parameters and its gradient g, keeps running
# averages (beta1 = 0.9, beta2 = 0.99, eps = 1e-8):
#   m = beta1 m + (1 - beta1) g,   v = beta2 v + (1 - beta2) g^2
#   m^ = m / (1 - beta1^t),   v^ = v / (1 - beta2^t)     (t = steps so far: undo the start from 0)
#   p = p - lr (m^ / (sqrt(v^) + eps) + weight_decay p)
# so each number moves by at most about lr, whatever its gradient's scale (m^ / sqrt(v^) is +-1 when
# every recent g agreed; noise makes it smaller: Moonshot AI's "Muon is Scalable for LLM Training" (2025)
# measured the root mean square of AdamW's update at 0.2 to 0.4, and Muon below borrows their 0.2).
# beta2 = 0.99 (torch's default is 0.999): with small batches, a shorter memory of g^2 adapts faster.
# The blocks' weight matrices learn faster with Muon, which treats a matrix W as a matrix, not a bag
# of numbers. It keeps a running average of W's gradient G, like AdamW's m, and looks one step ahead
# along it (Nesterov momentum):
#   M = mu M + (1 - mu) G   (mu = 0.95),      D = (1 - mu) G + mu M
# and sets every singular value of D to 1: if D = U S V^T (its singular value decomposition: U and V
# with orthonormal columns, S the stretches), the step is U V^T. The few directions that dominate a
# gradient no longer drown the rest; every direction W can move in moves by the same amount. (Muon needs
# some linear algebra; a first reading may take it on trust, or train with --optimizer=adamw and skip
# to 3d.)

def newton_schulz(D, dtype=torch.float32, steps=5):
    """About U V^T for D = U S V^T, from matrix products alone (no SVD, which is slow on a GPU).
    Divide D by its Frobenius norm sqrt(sum of squares) = sqrt(sum of s^2) >= the largest s, so every
    singular value s is in [0, 1]. U and V have orthonormal columns (U^T U = V^T V = I), so
    X X^T X = U S V^T V S U^T U S V^T = U S^3 V^T, and the update
    X <- a X + b (X X^T) X + c (X X^T)^2 X keeps U and V and maps each s to p(s) = a s + b s^3 + c s^5.
    The coefficients (tuned by Muon's author, Keller Jordan) make p steep at 0 (slope a = 3.4: small s
    grow 3.4x a round) yet keep s from overshooting: after five rounds every s above 0.002 of the norm
    lands between 0.68 and 1.2 (smaller ones are noise). That is not exactly 1, and it works as well."""
    a, b, c = 3.4445, -4.7750, 2.0315
    X = D / D.norm().clamp(min=1e-7)
    X = X.to(dtype)                                      # the matmuls run in the step's format (3b)
    wide = X.size(0) <= X.size(1)
    if not wide:
        X = X.T                                          # work with the smaller X X^T
    for _ in range(steps):
        A = X @ X.T
        P = torch.addmm(A, A, A, beta=b, alpha=c)       # b A + c A A: addmm(C, M, N) = beta C + alpha M N
        X = torch.addmm(X, P, X, beta=a)                 # a X + P X, one rounding instead of two or three
    return (X if wide else X.T).to(D.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum, the Nesterov look-ahead, U V^T by Newton-Schulz, then a step scaled to AdamW's size:
    U V^T of an m x n matrix has min(m, n) singular values of 1, so its squares sum to min(m, n) over
    m n entries: entries of about 1 / sqrt(max(m, n)). So the step is multiplied by
    0.2 sqrt(max(m, n)) to give entries of about 0.2 lr, the size of a typical AdamW step: one learning
    rate serves both. Weight decay as in AdamW: W <- W - lr weight_decay W."""

    def __init__(self, params, lr, weight_decay, momentum=0.95, ns_dtype=torch.float32):
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for W in group["params"]:
                if W.grad is None:
                    continue
                M = self.state[W].setdefault("momentum_buffer", torch.zeros_like(W))
                M.lerp_(W.grad, 1 - mu)                  # M = mu M + (1 - mu) G
                D = W.grad.lerp(M, mu)                   # D = (1 - mu) G + mu M
                W.mul_(1 - lr * group["weight_decay"])
                W.add_(newton_schulz(D, self.ns_dtype), alpha=-lr * 0.2 * math.sqrt(max(W.shape)))


# Who gets what: Muon takes the matrices between hidden layers (c_attn's q, k and v together, as one
# matrix); the embedding tables (wte, which is also lm_head, and wpe) and the LayerNorm gains stay with
# AdamW. --optimizer=adamw, nanoGPT's choice, gives AdamW the matrices too. Weight decay,
# p -= lr * weight_decay * p, pulls the matrices and the embedding tables toward 0, not the gains.

def make_optimizers(model, cfg, ns_dtype=torch.float32):
    """--optimizer=muon: [Muon for the blocks' weight matrices, AdamW for the embeddings and the
    LayerNorm gains]; --optimizer=adamw: [AdamW for everything]."""
    matrices = [p for name, p in model.named_parameters()
                if cfg.optimizer == "muon" and name.startswith("blocks.") and p.dim() == 2]
    in_muon = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if id(p) not in in_muon]
    groups = [{"params": [p for p in rest if p.dim() == 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    # fused: one kernel updates every parameter, instead of a few ops per tensor (CPU and CUDA have it)
    fused = next(model.parameters()).device.type in ("cpu", "cuda")
    adamw = torch.optim.AdamW(groups, lr=cfg.learning_rate, betas=(0.9, 0.99), fused=fused)
    if not matrices:
        return [adamw]
    return [Muon(matrices, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, ns_dtype=ns_dtype), adamw]


# 3d. One training step: forward under autocast (3b), backward, clip, update. `scaler` is a
# torch.amp.GradScaler, which matters only for float16 (section 5b): it multiplies the loss by a large
# factor before backward, so small gradients do not round to 0, and divides it out again before
# clipping and the update. For float32 and bfloat16 it is switched off and passes everything through.

def train_step(model, optimizers, scaler, autocast, x, y, lr, grad_clip):
    """One step of gradient descent on one batch: forward, backward (autograd applies the chain rule
    through every operation of the forward pass, giving each parameter's gradient), clip, update."""
    with autocast:
        _, loss = model(x, y)
    scaler.scale(loss).backward()
    if grad_clip > 0:  # g <- g * min(1, grad_clip / ||g||), ||g|| over all parameters: no single huge step
        for opt in optimizers:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr
        scaler.step(opt)
        opt.zero_grad(set_to_none=True)
    scaler.update()
    return loss


# 3e. Evaluation: the loss on batches the model is not trained on (val) tells whether it generalises.
# Part of the gap to the train loss is overfitting, and part is a different text: the val split is the
# last 10% of the file, on input.txt most of one play whose speakers rarely appear in training.

@torch.no_grad()
def estimate_loss(model, splits, cfg, autocast=None):
    """Mean loss over eval_iters batches of each split, on the same batches every time (fixed seed),
    so successive evaluations differ only because the model changed."""
    model.eval()
    device = next(model.parameters()).device
    out = {}
    for name, data in splits.items():
        g = torch.Generator().manual_seed(cfg.seed + 1)
        losses = []
        for _ in range(cfg.eval_iters):
            x, y = get_batch(data, cfg.batch_size, cfg.block_size, g)
            with autocast or nullcontext():
                _, loss = model(x.to(device), y.to(device))
            losses.append(loss.item())
        out[name] = sum(losses) / len(losses)
    model.train()
    return out


# The figure to report for a trained model is the loss on the whole val text, every character predicted
# once, with no random batches. The model sees at most block_size = T characters, so we slide a window
# along the text by S = T/2: the first window scores all its T predictions, each later one only its last
# S, whose contexts are T - S + 1 to T characters long. In closed form: character t (t >= 1) is predicted
# from characters c..t-1, where c = S * ceil(max(0, t - T) / S).
# Units: the loss is in nats (natural log). Divided by ln 2 it is in bits per character (bpc), the unit
# of the char-rnn write-ups and the enwik8 tables; e^loss is the perplexity, the number of equally likely
# characters the model is as unsure as.

@torch.no_grad()
def evaluate_text(model, data, block_size, device, autocast=None):
    """Mean loss (nats) over characters 1..N-1 of data, each predicted once from at least T/2 before it
    (or all there are)."""
    model.eval()
    T, S, N = block_size, block_size // 2, len(data)
    total = 0.0
    for s in range(0, max(N - 1 - T + S, 1), S):             # window k starts at s = k S
        end = min(s + T, N - 1)
        x = data[s:end].long()[None].to(device)               # (1, <= T)
        y = data[s + 1:end + 1].long()[None].to(device)
        with autocast or nullcontext():
            logits, _ = model(x)
        keep = 0 if s == 0 else T - S                         # the positions no earlier window scored
        total += F.cross_entropy(logits[0, keep:].float(), y[0, keep:], reduction="sum").item()
    model.train()
    return total / (N - 1)


# 3f. The training loop. Each iteration: where are we in the budget (0 -> 1), hence the learning rate;
# a batch of random windows; one step. Every eval_interval iterations, and when the budget is spent,
# estimate the losses on both splits. The budget counts training seconds: the time of the steps, not of
# the evaluations. `books` (section 6e) keeps the run's books, in two calls: `evaluated` prints and logs
# the losses and saves a checkpoint; `stepped` prints a progress line every log_interval iterations and
# says whether to stop early (Ctrl-C); it hands back the training seconds, with the wait for loss.item() on
# a GPU added and, under torchrun, rank 0's count for every process, so all follow one schedule. Delete
# those two lines, start from it, seconds = 0, 0.0, and this still trains. A resumed run starts from the
# iteration and seconds its checkpoint holds; a fresh one from 0.

def train(model, optimizers, splits, batch_gen, cfg, autocast, scaler, books):
    """Train until the budget is spent or a stop is asked for. splits: {"train": ids, "val": ids};
    batch_gen: the random generator the batches are drawn with."""
    device = next(model.parameters()).device
    it, seconds, stop = books.it, books.seconds, False
    while True:
        progress = budget_progress(it, seconds, cfg)
        if it % cfg.eval_interval == 0 or progress >= 1:
            losses = estimate_loss(model, splits, cfg, autocast)
            books.evaluated(it, seconds, losses)
        if progress >= 1 or stop:
            return
        t = time.perf_counter()
        lr = get_lr(it, progress, cfg)
        x, y = get_batch(splits["train"], cfg.batch_size, cfg.block_size, batch_gen)
        loss = train_step(model, optimizers, scaler, autocast, x.to(device), y.to(device), lr, cfg.grad_clip)
        it, seconds = it + 1, seconds + time.perf_counter() - t
        seconds, stop = books.stepped(it, seconds, loss, lr, progress)


# -----------------------------------------------------------------------------
# 4. Sampling
# -----------------------------------------------------------------------------
# To sample, turn the last position's logits into probabilities p = softmax(logits / temperature),
# optionally keep only the top_k most likely characters, draw one, append it, and repeat.
# Without a cache, each new character would re-run the whole window. With a key/value cache, each layer
# keeps the keys and values it already computed, so a new character costs one position's forward.
# Our position embeddings are absolute (0..block_size-1), so the cache cannot simply slide: every cached
# key and value was computed from a vector that holds its character's position, and after a slide by one
# each character would sit one position earlier, so all of them would be wrong. When the cache is full,
# we crop the text to its last block_size // 2 characters and recompute the cache from them (one
# half-window forward per block_size // 2 new characters).

# 4a. Drawing one character.

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


def sample_next(logits, temperature, top_k, generator=None):
    """logits: (B, V) -> ids (B, 1). temperature 0 means greedy (always the most likely)."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    probs = probabilities(logits, temperature, top_k)
    return torch.multinomial(probs, 1, generator=generator).to(logits.device)


# 4b. The key/value cache. Sampling feeds one new character at a time; its query must be scored against
# the keys of every character before it, which the cache holds. The mask of section 2a then changes:
# the Tq new queries are the last Tq of the Tk positions, so query i sits at position Tk - Tq + i and
# may see the keys up to there:

def attention_after_cache(q, k, v):
    """`attention` for queries that continue a cache: q (B, nh, Tq, d_k), k and v (B, nh, Tk, d_k), Tq <= Tk.
    The reference form: the tests check the model's cached forward against it."""
    Tq, Tk, d_k = q.size(-2), k.size(-2), q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)                        # (B, nh, Tq, Tk)
    future = torch.triu(torch.ones(Tq, Tk, dtype=torch.bool, device=q.device), diagonal=Tk - Tq + 1)
    weights = F.softmax(scores.masked_fill(future, float("-inf")), dim=-1)
    return weights @ v, weights


# With one new query (Tq = 1) nothing is masked: it may see every cached key. That is the only case
# sampling meets after the prompt, so the model's fast path (is_causal for T > 1, no mask for T = 1)
# computes exactly this.
#
# The cache could grow by torch.cat, a new tensor each step holding every key so far: copying all of
# them again for each new character. Instead it allocates room for block_size positions once, writes
# each new key and value into the next free slots, and hands attention a view of the filled part (a
# view shares the memory: nothing is copied). The model cannot see past block_size positions anyway;
# when the cache is full, generate empties it (clear) and refills it from a cropped context.

class KVCache:
    """The keys and values one attention layer has computed so far, so sampling can skip them: room for
    max_len (= block_size) positions, (B, nh, max_len, d_k) each, allocated at the first extend."""

    def __init__(self, max_len):
        self.max_len = max_len
        self.keys = self.values = None       # the storage, all max_len slots
        self.k = self.v = None               # views of the filled slots: (B, nh, filled, d_k)
        self.filled = 0

    def extend(self, k, v):
        """Write k, v (B, nh, T, d_k) into the next T slots; return all keys and values so far."""
        if self.keys is None:
            B, nh, _, d_k = k.shape
            self.keys = k.new_empty(B, nh, self.max_len, d_k)
            self.values = v.new_empty(B, nh, self.max_len, d_k)
        start, end = self.filled, self.filled + k.size(2)
        if end > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} positions; {end} do not fit")
        self.keys[:, :, start:end] = k
        self.values[:, :, start:end] = v
        self.filled = end
        self.k, self.v = self.keys[:, :, :end], self.values[:, :, :end]
        return self.k, self.v

    def clear(self):
        """Forget every position; the storage stays, to be written over."""
        self.filled = 0
        self.k = self.v = None


# 4c. The sampling loop: the prompt through the model once ("prefill", filling the caches), then one
# character at a time.

@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, generator=None):
    """Continue idx (B, T) by max_new_tokens ids, with a key/value cache."""
    model.eval()
    T = model.block_size
    caches = [KVCache(T) for _ in model.blocks]
    logits = model(idx[:, -T:], caches=caches)[0][:, -1]                     # (B, V)
    for _ in range(max_new_tokens):
        nxt = sample_next(logits, temperature, top_k, generator)             # (B, 1)
        idx = torch.cat([idx, nxt], dim=1)
        if caches[0].filled == T:                     # full: crop to the last T // 2 and recompute
            for cache in caches:
                cache.clear()
            logits = model(idx[:, -max(1, T // 2):], caches=caches)[0][:, -1]
        else:
            logits = model(nxt, caches=caches)[0][:, -1]
    return idx


# -----------------------------------------------------------------------------
# 5. Making it fast
# -----------------------------------------------------------------------------
# Sections 1-4 are the whole model. This section rewrites three of their steps in faster forms, each an
# optimisation of something already understood, each with a test that it computes what the plain form
# computes. The command line (section 6) uses these forms. RESULTS.md has their measured gains.

# 5a. Encoding a big text. encode() makes a Python list: one 8-byte slot per character, pointing to
# stoi's own int objects, so a 100 MB text would need about 0.8 GB as a list, on top of the Python str.
# encode_text() computes the same ids in NumPy, a slice at a time: each character's code point (its
# UTF-32 value) indexes a lookup table whose entries are the ids. The ids go in the smallest integer type
# that holds them: 1 byte per character for up to 256 characters (int16 holds 32,768, int32 the rest);
# a batch converts only its own windows to int64 (get_batch).

def id_dtype(vocab_size):
    return np.uint8 if vocab_size <= 256 else np.int16 if vocab_size <= 2**15 else np.int32


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


# 5b. Precision, decided (section 3b asked the question). The formats:
#   float32   23 stored mantissa bits: exact enough for everything, the baseline speed.
#   bfloat16  float32's range with 7 stored mantissa bits: native on GPUs from Ampere on and on CPUs with
#             AVX512-BF16 or AMX; any other CPU converts every number to float32 and back, several to
#             tens of times slower than float32 (RESULTS.md has the timings).
#   float16   10 stored mantissa bits but a narrow range (max 65504): fast on the tensor cores of GPUs
#             before Ampere, which only emulate bfloat16; needs the GradScaler (3d).
#   TF32      float32 numbers multiplied with 10 mantissa bits on the tensor cores of GPUs from Ampere
#             on: what they use for the matmuls autocast leaves in float32, because we turn it on below.

def choose_dtype(device_type, cpu=(False, ""), cuda_capability=None):
    """The precision policy, a pure function of the hardware: (dtype, why). cpu is cpu_bf16()'s verdict,
    (native, why); cuda_capability is the GPU's (major, minor): 8.0 is Ampere (A100), 7.x Volta/Turing."""
    if device_type == "cuda":
        if cuda_capability >= (8, 0):
            return "bfloat16", "this GPU (Ampere or later) has fast bfloat16"
        if cuda_capability >= (7, 0):
            return "float16", "this GPU is older than Ampere: no fast bfloat16, float16 on its tensor cores"
        return "float32", "this GPU has no tensor cores"
    if device_type == "mps":
        return "float32", "Apple GPUs: float32, the format every one of them runs at full speed"
    native, why = cpu
    return ("bfloat16" if native else "float32"), why


# Does this CPU multiply bfloat16 natively? Not what torch.ops.mkldnn._is_mkldnn_bf16_supported() says:
# it answers True on every AVX-512 CPU, because oneDNN can *run* bfloat16 there by converting, which is
# several times slower than float32. The CPU's own flags say it: avx512_bf16 or amx_bf16 (Linux lists
# them in /proc/cpuinfo). Where no flags can be read (Windows, macOS), a small matmul timed in both
# formats decides. ARM CPUs (Apple's among them) stay in float32. ONEDNN_MAX_CPU_ISA, which caps the
# instructions oneDNN may use, is obeyed: with it at AVX2 or AVX512_CORE there is no bfloat16 either.
X86 = ("x86_64", "amd64", "i686", "i386", "x86")


def cpu_bf16(machine, flags, isa_cap="", probe=None):
    """(native, why) for a CPU of this machine type, these flags (None: unknown) and this oneDNN cap."""
    if machine.lower() not in X86:
        return False, "bfloat16 is not known to be faster than float32 on this CPU"
    if flags is None:
        ratio = probe()                                   # bfloat16 time / float32 time
        return ratio < 0.8, f"a test matmul ran {1 / ratio:.1f}x as fast in bfloat16 as in float32"
    cap = "" if isa_cap.upper() in ("ALL", "DEFAULT") else isa_cap.upper()   # "": oneDNN may use everything
    native = "avx512_bf16" in flags or "amx_bf16" in flags
    if native and (not cap or any(s in cap for s in ("BF16", "AMX", "AVX10"))):
        return True, "this CPU has native bfloat16 (AVX512-BF16 or AMX)"
    why = f"ONEDNN_MAX_CPU_ISA={isa_cap} rules out its native bfloat16" if native else "this CPU has no native bfloat16"
    if "avx512f" in flags and not (cap.startswith(("SSE", "AVX2")) or cap == "AVX"):
        return False, f"{why} (AVX-512 without it: emulated, ~4x slower than float32)"
    return False, f"{why} (AVX2 at most: emulated, tens of times slower than float32)"


def cpu_flags(path="/proc/cpuinfo"):
    """The CPU's feature flags as Linux lists them (x86: "flags", ARM: "Features"), or None without the file."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
        return set()
    except OSError:
        return None


def bf16_probe():
    """Time a (256 x 128) @ (128 x 128) matmul in bfloat16 and in float32 (best of 3; tens of milliseconds
    at most, when bfloat16 is emulated): the ratio of the two times."""
    a, b = torch.randn(256, 128), torch.randn(128, 128)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y                                              # warm-up: the first call sets up the kernel
        times = []
        for _ in range(3):
            t = time.perf_counter()
            x @ y
            times.append(time.perf_counter() - t)
        best[dtype] = min(times)
    return best[torch.bfloat16] / best[torch.float32]


def this_cpu_bf16():
    return cpu_bf16(platform.machine(), cpu_flags(), os.environ.get("ONEDNN_MAX_CPU_ISA", ""), bf16_probe)


def setup_precision(cfg, device):
    """Read the hardware, apply the policy (or --dtype), and build what the training step needs:
    (dtype name, why, autocast context, GradScaler). On a GPU, TF32 for what stays in float32."""
    device_type = device.split(":")[0]
    if cfg.dtype == "auto":
        capability = torch.cuda.get_device_capability(device) if device_type == "cuda" else None
        cpu = this_cpu_bf16() if device_type == "cpu" else (False, "")
        dtype, why = choose_dtype(device_type, cpu, capability)
    else:
        dtype, why = cfg.dtype, "set by --dtype"
        if dtype == "bfloat16" and device_type == "cpu":
            native, cpu_why = this_cpu_bf16()
            if not native:
                why += f" ({cpu_why}: expect it to be slower than float32)"
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32: float32's range, 10 mantissa bits, tensor cores
        torch.backends.cudnn.allow_tf32 = True
    autocast = (nullcontext() if dtype == "float32"
                else torch.autocast(device_type=device_type, dtype=getattr(torch, dtype)))
    scaler = torch.amp.GradScaler(device_type, enabled=dtype == "float16")
    return dtype, why, autocast, scaler


def float32_attention(q, k, v, dropout_p):
    """On a CPU with native bfloat16 the matmuls run in bf16, but torch's attention kernel is slow in bf16
    there: attention, a small share of the FLOPs, runs in float32 (CausalSelfAttention.forward, 2b)."""
    with torch.autocast("cpu", enabled=False):
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=q.size(2) > 1,
                                           dropout_p=dropout_p)
    return y.to(q.dtype)


# 5c. Sampling quickly. A step is one character through the model: a few dozen operations, each on a
# vector of n_embd numbers, so the arithmetic is cheap and the time goes to what surrounds it: ~50
# nn.Module calls, the splits and reshapes of heads() and merge(), dropout calls that do nothing in eval
# mode, and ~70 attribute lookups like block.attn.c_attn.weight. forward_one computes the same numbers,
# bit for bit (a test checks), with the functions the modules call and nothing around them, on one
# vector per sequence, (B, C), rather than a sequence of one, (B, 1, C); step_weights does the lookups
# once per call of generate_fast. generate_fast adds inference_mode (no autograd bookkeeping at all,
# where no_grad still keeps a version counter on every tensor) and an output tensor written in place
# rather than one torch.cat per character, and draws with an exponential race in place of
# torch.multinomial:
# An exponential time with rate r is a waiting time t with P(t > s) = e^(-r s); E ~ Exp(1) is one with
# rate 1, and E / r is one with rate r. Character i runs the race in time E_i / p_i, all E_i independent.
# It wins when every other time is longer than its own, s; those others together last past s with
# probability e^(-(1 - p_i) s), since the rates sum to 1, so
#   P(i wins) = integral over s of p_i e^(-p_i s) e^(-(1 - p_i) s) ds = p_i integral e^(-s) ds = p_i.
# The winner, the largest p_i / E_i, is a draw from p. torch.multinomial(p, 1) computes exactly this, with
# the same random numbers and the same winner (a test checks), after checking that p is a distribution;
# those checks cost more than the draw itself.

def draw(probs, generator=None):
    """torch.multinomial(probs, 1): probs (B, V), rows summing to 1 -> ids (B, 1), i with probability p_i."""
    times = torch.empty_like(probs).exponential_(generator=generator)       # E_i ~ Exp(1)
    return (probs / times).argmax(dim=-1, keepdim=True)


def step_weights(model):
    """The tensors forward_one reads, gathered once: per block (n_head, ln_1, c_attn, attn.c_proj, ln_2,
    c_fc, mlp.c_proj), then the embeddings, the final LayerNorm's gain and lm_head."""
    blocks = [(b.attn.n_head, b.ln_1.weight, b.attn.c_attn.weight, b.attn.c_proj.weight,
               b.ln_2.weight, b.mlp.c_fc.weight, b.mlp.c_proj.weight) for b in model.blocks]
    return blocks, model.wte.weight, model.wpe.weight, model.ln_f.weight, model.lm_head.weight


def forward_one(weights, idx, caches):
    """model(idx, caches=caches)[0][:, -1] for idx (B, 1), one new character per sequence (eval mode):
    logits (B, V). weights: step_weights(model)."""
    blocks, wte, wpe, ln_f, lm_head = weights
    B, C = idx.size(0), wte.size(1)
    x = wte[idx[:, 0]] + wpe[caches[0].filled]                               # (B, C)
    for (nh, ln_1, c_attn, attn_proj, ln_2, c_fc, mlp_proj), cache in zip(blocks, caches, strict=True):
        qkv = F.linear(F.layer_norm(x, (C,), ln_1), c_attn)                  # (B, 3C): q | k | v
        # each of q, k, v is nh heads of d_k side by side; heads() also moves the head axis before the
        # time axis (transpose), but with T = 1 an axis of size 1 can go anywhere without moving memory
        q, k, v = qkv.view(B, 3, nh, 1, C // nh).unbind(1)                  # 3 x (B, nh, 1, d_k)
        k, v = cache.extend(k, v)
        y = F.scaled_dot_product_attention(q, k, v)                         # one query: it sees every key
        x = x + F.linear(y.view(B, C), attn_proj)                           # merge(), the same way
        x = x + F.linear(F.gelu(F.linear(F.layer_norm(x, (C,), ln_2), c_fc)), mlp_proj)
    return F.linear(F.layer_norm(x, (C,), ln_f), lm_head)


def generate_fast(model, idx, max_new_tokens, temperature=1.0, top_k=None, on_token=None, generator=None):
    """generate (4c), the same ids for the same generator, quickly. on_token(ids) sees each new (B, 1)."""
    model.eval()
    T = model.block_size
    B, n = idx.shape
    out = torch.empty(B, n + max_new_tokens, dtype=idx.dtype, device=idx.device)  # the prompt, then the new ids
    out[:, :n] = idx                      # (made outside inference_mode: a tensor made inside could never
                                          # be used with autograd, e.g. trained on)
    caches = [KVCache(T) for _ in model.blocks]
    weights = step_weights(model)
    with torch.inference_mode():
        logits = model(idx[:, -T:], caches=caches)[0][:, -1]
        for _ in range(max_new_tokens):
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                nxt = draw(probabilities(logits, temperature, top_k), generator).to(logits.device)
            out[:, n:n + 1] = nxt
            n += 1
            if on_token:
                on_token(nxt)
            if n == out.size(1):                             # the last: its logits would go unused
                break
            if caches[0].filled < T:
                logits = forward_one(weights, nxt, caches)
            else:
                for cache in caches:
                    cache.clear()
                logits = model(out[:, n - max(1, T // 2):n], caches=caches)[0][:, -1]
    return out


SMALL_STEP = 250_000  # parameters: below this, sampling takes one thread


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


# -----------------------------------------------------------------------------
# 6. Running it: the command line, checks, checkpoints, the run's books, main. Machinery around the
#    lesson; a reader may skip it.
# -----------------------------------------------------------------------------
# 6a. Configuration: every knob once, its default and its meaning side by side; --help is built from
# them. A default of None means "chosen for the device" (DEVICE_DEFAULTS below).

KIND = "char_gpt"  # written into checkpoints, so char_rnn.py's checkpoints are told apart


def knob(default, help):
    return field(default=default, metadata={"help": help})


@dataclass
class Config:
    # I/O
    input: str = knob("input.txt", "UTF-8 text file to learn from")
    out_dir: str = knob("out/char_gpt", "where ckpt.pt, log.csv, metrics.json and loss.png go")
    device: str = knob("auto", "auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    seed: int = knob(1337, "random seed (data order, initialisation, dropout, sampling)")
    # how long to train: whichever limit comes first (no limit set: --max_seconds for the device)
    max_iters: int | None = knob(None, "stop after this many iterations")
    max_seconds: float | None = knob(None, "stop after this many seconds of training (evaluation not counted); "
                                           "the learning rate decays over this budget")
    eval_interval: int | None = knob(None, "evaluate train/val loss and save a checkpoint every N iterations")
    eval_iters: int = knob(20, "batches averaged for each evaluated loss")
    eval_sample: bool = knob(True, "print a one-line sample (80 characters, fixed seed) at each evaluation")
    log_interval: int = knob(100, "print a progress line every N iterations")
    # data and model
    batch_size: int | None = knob(None, "sequences per step")
    block_size: int | None = knob(None, "context length in characters")
    n_layer: int | None = knob(None, "Transformer blocks")
    n_head: int | None = knob(None, "attention heads per block")
    n_embd: int | None = knob(None, "width of the residual stream")
    dropout: float | None = knob(None, "dropout probability")
    # optimisation
    optimizer: str = knob("muon", "muon (Muon for the blocks' weight matrices, AdamW for the rest) or adamw "
                                  "(AdamW for all; on a CPU give it --learning_rate=3e-3)")
    learning_rate: float | None = knob(None, "peak learning rate")
    min_lr: float | None = knob(None, "learning rate at the end of the cosine decay")
    warmup_iters: int = knob(100, "iterations of linear warm-up (0: none)")
    weight_decay: float = knob(0.1, "weight decay, applied to weight matrices and embedding tables only")
    grad_clip: float = knob(1.0, "clip the gradient norm to this (0: off)")
    dtype: str = knob("auto", "auto (section 5b: bfloat16 where this hardware runs it natively, float16 on "
                              "older GPUs, else float32), float32, bfloat16 or float16")
    compile: bool = knob(False, "compile the model with torch.compile (worth it on a GPU)")
    # resuming and sampling
    resume: bool = knob(False, "continue training from out_dir/ckpt.pt (its model shape and optimizer win over "
                               "the flags); a larger budget stretches the cosine over the new budget")
    eval_only: bool = knob(False, "do not train: print the loss of out_dir/ckpt.pt on the whole val split "
                                  "(the last tenth) of --input, every character predicted once")
    sample_only: bool = knob(False, "do not train: load out_dir/ckpt.pt and print samples")
    prompt: str = knob("\n", "text the samples continue")
    max_new_tokens: int = knob(500, "characters to generate per sample")
    num_samples: int = knob(1, "how many samples to print")
    temperature: float = knob(0.8, "divide the logits by this: < 1 safer, > 1 wilder")
    top_k: int | None = knob(None, "sample only from the k most likely characters (None: all)")


# The defaults of the fields left at None, per device; RESULTS.md has the runs that chose them.
DEVICE_DEFAULTS = {
    "cpu": dict(max_seconds=300, eval_interval=500, batch_size=12, block_size=128, n_layer=4, n_head=4,
                n_embd=128, dropout=0.0, learning_rate=1e-2, min_lr=0.0),
    "gpu": dict(max_seconds=90, eval_interval=250, batch_size=64, block_size=256, n_layer=6, n_head=6,
                n_embd=384, dropout=0.2, learning_rate=3e-3, min_lr=3e-4),
}
SHAPE = ("batch_size", "block_size", "n_layer", "n_head", "n_embd", "dropout", "optimizer")  # a resume keeps these


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"{message} (see --help)")


def parse_bool(s):
    if s.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
    return s.lower() in ("1", "true", "yes", "on")


def parse_args(argv=None) -> Config:
    """Flags mirror the Config fields: --name=value or --name value; a bare --resume means true."""
    parser = OneLineParser(description=__doc__.split("\n")[0])
    for f in fields(Config):
        kind = next(t for t in (typing.get_args(f.type) or (f.type,)) if t is not type(None))  # int | None: int
        default = (f"cpu {DEVICE_DEFAULTS['cpu'][f.name]}, gpu {DEVICE_DEFAULTS['gpu'][f.name]}"
                   if f.name in DEVICE_DEFAULTS["cpu"] else repr(f.default))
        extra = dict(type=parse_bool, nargs="?", const=True) if kind is bool else dict(type=kind)
        parser.add_argument(f"--{f.name}", default=f.default, help=f"{f.metadata['help']} (default: {default})",
                            **extra)
    return Config(**vars(parser.parse_args(argv)))


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
    for name in ("batch_size", "block_size", "n_layer", "n_head", "n_embd", "eval_interval", "eval_iters",
                 "log_interval"):
        if getattr(cfg, name) < 1:
            raise UsageError(f"--{name}={getattr(cfg, name)} must be at least 1")
    for name in ("max_iters", "max_seconds", "learning_rate"):
        if getattr(cfg, name) is not None and getattr(cfg, name) <= 0:
            raise UsageError(f"--{name}={getattr(cfg, name)} must be positive")
    if cfg.n_embd % cfg.n_head:
        raise UsageError(f"--n_embd={cfg.n_embd} is not divisible by --n_head={cfg.n_head}: "
                         f"each head gets n_embd / n_head dimensions, e.g. --n_embd={cfg.n_head * 32}")
    if not 0 <= cfg.dropout < 1:
        raise UsageError(f"--dropout={cfg.dropout} must be in [0, 1)")
    if cfg.min_lr < 0:
        raise UsageError(f"--min_lr={cfg.min_lr} must be at least 0")
    if cfg.optimizer not in ("muon", "adamw"):
        raise UsageError(f"--optimizer={cfg.optimizer}: use muon or adamw")
    if cfg.dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise UsageError(f"--dtype={cfg.dtype}: use auto, float32, bfloat16 or float16")
    check_sample_flags(cfg)
    return cfg


def check_sample_flags(cfg: Config):
    if cfg.eval_only + cfg.sample_only + cfg.resume > 1:
        raise UsageError("--eval_only, --sample_only and --resume exclude each other: give one")
    if cfg.max_new_tokens < 1 or cfg.num_samples < 1 or cfg.temperature < 0:
        raise UsageError("--max_new_tokens and --num_samples must be at least 1, --temperature at least 0")
    if cfg.top_k is not None and cfg.top_k < 1:
        raise UsageError(f"--top_k={cfg.top_k} must be at least 1")
    if not cfg.prompt:
        raise UsageError("--prompt is empty: the samples need at least one character to start from")


def check_prompt(prompt, stoi):
    missing = sorted(set(prompt) - set(stoi))
    if missing:
        raise UsageError(f"the prompt has characters the model never saw: {''.join(missing)!r}; "
                         "use characters from the training text")


# 6b. Reading the text, with a one-line error for each way it can fail.

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
    """The text's ids, split 90/10, and its vocabulary (itos: a checkpoint's, to resume with)."""
    text = read_text(cfg.input)
    itos = itos or build_vocab(text)
    data = encode_text(text, {c: i for i, c in enumerate(itos)})                         # section 5a
    if len(data) - int(0.9 * len(data)) < cfg.block_size + 1:
        raise UsageError(f"the input has {len(text):,} characters, too short for --block_size={cfg.block_size} "
                         f"(the 10% validation split needs a window): use at least "
                         f"{math.ceil((cfg.block_size + 1) / 0.1):,} characters or a smaller --block_size")
    return split_data(data), itos


# 6c. Checkpoints and outputs. torch.save writes a pickle, and loading an arbitrary pickle can run
# code, so we store only tensors and plain Python values and load with weights_only=True. Every file is
# written to a temporary name and then renamed: the rename is atomic, so a crash mid-write keeps the old one.

def write_atomically(path, write, mode="w"):
    """write(f) to a temporary file, then rename it to path."""
    with open(path + ".tmp", mode, **({} if "b" in mode else {"newline": ""})) as f:
        write(f)
    os.replace(path + ".tmp", path)


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


def prepare_out_dir(out_dir):
    try:
        os.makedirs(out_dir, exist_ok=True)
        write_atomically(os.path.join(out_dir, ".write_test"), lambda f: None)
        os.remove(os.path.join(out_dir, ".write_test"))
    except OSError as e:
        raise UsageError(f"cannot write to --out_dir={out_dir} ({e.strerror}): choose a writable folder") from None


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


def bpc(loss):
    return loss / math.log(2)


# 6d. Several processes (torchrun): each trains on its own random batches; DistributedDataParallel
# averages the gradients across processes during backward (all-reduce, bucket by bucket as they become
# ready), so every copy of the model takes the same step.

def setup_ddp(device):
    rank, local_rank, world = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    torch.distributed.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return rank, world, device


# 6e. The books, kept beside the loop of section 3f: the iteration count and training seconds, the losses
# (log.csv, loss.png), checkpoints, progress lines, and stopping. The first Ctrl-C (SIGINT), or the SIGTERM
# a job scheduler sends, only asks to stop: the loop finishes its step, and finish() saves. Cut mid-step, a
# checkpoint could hold a model that one optimizer has updated and the other not yet. A second Ctrl-C stops
# at once; the last checkpoint written stays as it was. A checkpoint continues exactly where the run was: on
# a CPU bit for bit (the CPU's random state is saved; a GPU's is not, so there dropout draws afresh).

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


# MFU, model FLOPs utilisation: the share of the GPU's peak bf16 FLOP/s the model's own arithmetic uses,
# 6 FLOPs per parameter per token (2 forward, 4 backward) plus attention's QK^T and AV.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "4090": 165e12}


def mfu(model, cfg, tokens_per_s):
    device = next(model.parameters()).device
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    if not peak:
        return ""
    flops_per_token = 6 * count_params(model) + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
    return f" | mfu {flops_per_token * tokens_per_s / peak:.0%}"


def sample_line(model, itos, n=80):
    """n characters from the model (seed 0, temperature 0.8), line breaks shown as " / ": one line, so an
    evaluation's losses and its sample stand together in the log. The model is put back in training mode."""
    stoi = {c: i for i, c in enumerate(itos)}
    idx = torch.tensor([encode("\n" if "\n" in stoi else itos[0], stoi)], device=next(model.parameters()).device)
    with sampling_settings(model):
        out = generate_fast(model, idx, n, temperature=0.8, generator=torch.Generator().manual_seed(0))
    model.train()
    return decode(out[0, 1:].tolist(), itos).replace("\n", " / ")


# 6f. A run: where (one device, or one process per device under torchrun), what (a fresh start, or a
# checkpoint's model and optimizers with this run's budget and logging), then the lesson's pieces, wired
# together and handed to train().

def run(cfg, quiet=False):
    """Train as cfg says. Returns a dict: model, itos, device, history (rows of log.csv), metrics, stopped."""
    device, rank, world = pick_device(cfg.device), 0, 1
    if int(os.environ.get("RANK", -1)) != -1:
        rank, world, device = setup_ddp(device)
    path = os.path.join(cfg.out_dir, "ckpt.pt")
    ckpt = load_checkpoint(path) if cfg.resume else None
    if ckpt and "optimizers" not in ckpt:  # the layout before Muon joined AdamW: one optimizer state
        raise UsageError(f"{path} comes from an older {KIND}.py and cannot be resumed: train again with another "
                         "--out_dir (--sample_only still works on this one)")
    for name in SHAPE if ckpt else ():
        setattr(cfg, name, ckpt["config"][name])
    cfg = fill_defaults(cfg, device)
    if rank == 0:
        prepare_out_dir(cfg.out_dir)
    try:
        (train_data, val_data), itos = read_data(cfg, ckpt and ckpt["itos"])
    except UsageError as e:
        raise UsageError(f"{cfg.input}: {e}; resume on the text it was trained on" if ckpt else str(e)) from None
    check_prompt(cfg.prompt, {c: i for i, c in enumerate(itos)})  # the sample comes after training: fail now

    torch.manual_seed(cfg.seed + rank)
    model = GPT(cfg, len(itos)).to(device)
    dtype, why, autocast, scaler = setup_precision(cfg, device)                         # section 5b
    optimizers = make_optimizers(model, cfg, ns_dtype=getattr(torch, dtype))
    batch_gen = torch.Generator().manual_seed(cfg.seed + rank)  # each process its own stream of batches
    say = (lambda *a, **k: None) if quiet else print
    books = Books(cfg, model, optimizers, itos, ckpt, say, rank, world, data_rng=batch_gen)
    if ckpt:
        batch_gen.set_state(ckpt["data_rng"])
        if world > 1:  # the checkpoint holds rank 0's stream: each process a fresh one of its own
            batch_gen.manual_seed(cfg.seed + rank + world * books.it)
    fast = torch.compile(model) if cfg.compile else model
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP
        fast = DDP(fast, device_ids=[int(device.split(":")[1])] if device.startswith("cuda") else None)
    books.say(f"{KIND}: {count_params(model):,} parameters, vocabulary {len(itos)}, {len(train_data):,} training "
              f"characters, device {device}" + (f", {world} processes" if world > 1 else "") + f"; {dtype}: {why}")
    with books.signals():
        train(fast, optimizers, {"train": train_data, "val": val_data}, batch_gen, cfg, autocast, scaler, books)
    return books.finish(count_params(model))


# 6g. Sampling and evaluating a checkpoint, and main.

def load_model(out_dir, device="cpu", ckpt=None):
    """The trained model and its vocabulary from out_dir/ckpt.pt (ckpt: that file, if already read)."""
    ckpt = ckpt or load_checkpoint(os.path.join(out_dir, "ckpt.pt"))
    cfg = Config(**{k: v for k, v in ckpt["config"].items() if k in {f.name for f in fields(Config)}})
    model = GPT(cfg, len(ckpt["itos"]))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:  # missing or unexpected weights, or a shape that is not the config's
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UsageError(f"{out_dir}/ckpt.pt does not fit its own config ({first.rstrip('.')}): train again") from None
    return model.to(device).eval(), ckpt["itos"]


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
    model, itos = load_model(cfg.out_dir, device)
    try:
        data = encode_text(read_text(cfg.input), {c: i for i, c in enumerate(itos)})
    except UsageError as e:
        raise UsageError(f"{cfg.input}: {e}; evaluate on a text with the training text's characters") from None
    val = data[int(0.9 * len(data)):]
    if len(val) < 2:
        raise UsageError(f"{cfg.input} is too short: its last 10% must hold at least 2 characters")
    loss = evaluate_text(model, val, model.block_size, device)
    print(f"val loss {loss:.4f} nats/char, {bpc(loss):.4f} bits/char, perplexity {math.exp(loss):.3f}, "
          f"over {len(val) - 1:,} characters of {cfg.input} (the last 10%, each predicted once)")


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
        model, itos = load_model(cfg.out_dir, device)
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
