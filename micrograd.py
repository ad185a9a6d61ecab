"""micrograd.py: automatic differentiation, from one number up to a trained classifier.

What you will learn, in reading order:
  Part 1  the engine: a scalar `Value` that records how it was computed, and `backward()`, which walks
          that record in reverse, applying the chain rule. A worked example checks it against pen and paper.
  Part 2  a small neural-network library (Neuron, Layer, MLP: a multi-layer perceptron) made of nothing but
          Values, and the basic training step.
  Part 3  the same math vectorised with NumPy: a layer is a matrix product, the backward pass is written out
          by hand, with MSE and cross-entropy losses and the optimizers SGD (momentum), RMSprop and Adam.
  Part 4  a demo: the Value-MLP learns the two-moons set, the NumPy MLP learns a 3-class spiral.
  Part 5  running it: the command line (nothing new to learn there).

Run:   python micrograd.py           both demos (well under a minute on 2 CPU cores)
       python micrograd.py --plot    also save decision-boundary plots to out/micrograd/
       python micrograd.py --help    every flag
Test:  pytest tests/test_micrograd.py   (every hand-written piece against torch or finite differences)
Speed: python benchmarks/bench_micrograd.py   (this engine against the classic closure-based design; see the
       aside after Part 4)
"""

from __future__ import annotations

import argparse
import gc
import math
import random
import sys
import time
from pathlib import Path

import numpy as np

# -----------------------------------------------------------------------------
# Part 1: the engine
# -----------------------------------------------------------------------------
# The idea: a Value is a number that remembers how it was computed. `c = a * b` makes a new Value c that keeps
# its inputs (a, b) and, right there beside the forward formula, the local derivatives dc/da = b and dc/db = a.
# A whole computation becomes a graph of such nodes, from the inputs up to one output L.
# L is the loss: one number that measures how wrong a model's outputs are. Training makes it smaller.
# A node points only at its inputs, which existed before it, so the graph has no cycles.
#
# `L.backward()` then walks the graph from L back to the inputs and fills in each Value's `grad` with dL/d(value),
# by the chain rule: if x is used by the nodes n1, n2, ..., then
#   dL/dx = sum over those n of  dL/dn * dn/dx       (dL/dn: found before x is reached;  dn/dx: stored by n)


class Value:
    """One scalar in a computation graph: its number, its gradient, and how it was made."""

    __slots__ = ("data", "grad", "_prev", "_local_grads", "_op", "label")  # these six only: no per-node dict

    def __init__(self, data, _prev=(), _local_grads=(), _op="", label=""):
        self.data = data
        self.grad = 0.0  # dL/d(this Value), filled in by backward()
        self._prev = _prev  # the Values this one was computed from
        self._local_grads = _local_grads  # d(this)/d(input) for each input in _prev, same order
        self._op = _op  # name of the operation that made it, shown by trace_graph()
        self.label = label  # optional name, shown by trace_graph()

    def __repr__(self):
        name = f"{self.label}, " if self.label else ""
        return f"Value({name}data={self.data:.6g}, grad={self.grad:.6g})"

    # The primitive operations. Each one: the forward result, then d(result)/d(input) as a number.

    def __add__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        # out = a + b;   d out/da = 1,  d out/db = 1
        return Value(self.data + other.data, (self, other), (1.0, 1.0), "+")

    def __mul__(self, other):
        other = other if isinstance(other, Value) else Value(other)
        # out = a * b;   d out/da = b,  d out/db = a
        return Value(self.data * other.data, (self, other), (other.data, self.data), "*")

    def __pow__(self, k):
        if not isinstance(k, (int, float)):
            raise TypeError("Value ** k: the exponent k must be a plain number")
        # out = a^k;   d out/da = k a^(k-1)
        return Value(self.data**k, (self,), (k * self.data ** (k - 1),), f"**{k}")

    # exp and log are not used by the demos in this file. With them, Values can express losses built from
    # probabilities, such as -ln(e^a / (1 + e^a)); tests/test_micrograd.py checks both against torch.

    def exp(self):
        e = math.exp(self.data)
        # out = e^a;   d out/da = e^a
        return Value(e, (self,), (e,), "exp")

    def log(self):
        # out = ln a;   d out/da = 1/a   (a > 0)
        return Value(math.log(self.data), (self,), (1.0 / self.data,), "log")

    def relu(self):
        positive = self.data > 0
        # out = max(0, a);   d out/da = 1 if a > 0 else 0   (0 at a = 0, as torch chooses)
        return Value(self.data if positive else 0.0, (self,), (1.0 if positive else 0.0,), "relu")

    def tanh(self):
        t = math.tanh(self.data)
        # out = tanh a;   d out/da = 1 - tanh(a)^2
        return Value(t, (self,), (1.0 - t * t,), "tanh")

    def sigmoid(self):
        # out = s = 1 / (1 + e^-a);   d out/da = s (1 - s)
        # For very negative a, e^-a overflows, so there we use the equal form e^a / (1 + e^a).
        # For one Python float, an `if` on the sign is the simplest guard.
        if self.data >= 0:
            s = 1.0 / (1.0 + math.exp(-self.data))
        else:
            e = math.exp(self.data)
            s = e / (1.0 + e)
        return Value(s, (self,), (s * (1.0 - s),), "sigmoid")

    # Everything else is made of the primitives, so it needs no derivative of its own.
    # `a += b` needs no method either: Python falls back to `a = a + b`, a new node. (Changing `a` in place
    # would lose how the old `a` was computed, and make `a` an input of itself: a cycle.)

    def __neg__(self):  # -a = a * (-1)
        return self * -1.0

    def __sub__(self, other):  # a - b = a + (-b)
        return self + (-other)

    def __truediv__(self, other):  # a / b = a * b^-1
        return self * other**-1

    # Reflected versions, used when the left operand is a plain number: 2 * a calls a.__rmul__(2).

    def __radd__(self, other):  # n + a
        return self + other

    def __rmul__(self, other):  # n * a
        return self * other

    def __rsub__(self, other):  # n - a = (-a) + n
        return -self + other

    def __rtruediv__(self, other):  # n / a = a^-1 * n
        return self**-1 * other

    # The backward pass. The chain rule at x needs dL/dn complete for every node n that uses x, so the nodes
    # are listed in topological order (each node after its inputs), and that list is walked backwards.

    def topological_order(self):
        """Every Value this one depends on, itself last, each listed after all of its inputs."""
        # The plain form is recursive: a node is listed after everything below each of its inputs.
        #     order, visited = [], set()
        #     def visit(node):
        #         if node not in visited:
        #             visited.add(node)
        #             for inp in node._prev:
        #                 visit(inp)
        #             order.append(node)
        #     visit(self)
        # Below is the same depth-first search with our own stack: Python stops at ~1,000 nested calls, so
        # the recursive sort dies with RecursionError on a deep graph such as a long chain of ops.
        # Each node goes on the stack twice: first to push its inputs, then (done=True) to be emitted,
        # which happens only after everything pushed above it, i.e. all of its inputs, has been emitted.
        order, visited, stack = [], set(), [(self, False)]
        while stack:
            node, done = stack.pop()
            if done:
                order.append(node)
            elif node not in visited:
                visited.add(node)
                stack.append((node, True))
                for inp in node._prev:
                    if inp not in visited:
                        stack.append((inp, False))
        return order

    def backward(self):
        """Called on the output L: add dL/dv to v.grad for every Value v in the graph below L. Once per graph:
        the grads it fills stay, and a second call would push those old grads down again with the new ones,
        over-counting (zero every grad first to redo it)."""
        self.grad = 1.0  # dL/dL
        # `+=` below, because a Value used twice (x * x, a weight shared by two paths) gets one term per use.
        for node in reversed(self.topological_order()):
            grad = node.grad  # dL/d node: every user of node came earlier, so this sum is complete
            for inp, local_grad in zip(node._prev, node._local_grads, strict=True):
                inp.grad += grad * local_grad  # dL/d inp += dL/d node * d node/d inp


def trace_graph(root):
    """The graph below `root` as text: one line per node, inputs first, with its op, data and grad."""
    order = root.topological_order()
    names = {node: node.label or f"v{i}" for i, node in enumerate(order)}
    lines = []
    for node in order:
        made_from = f"{node._op}({', '.join(names[inp] for inp in node._prev)})" if node._op else "leaf"
        lines.append(f"{names[node]:>4} = {made_from:<16} data={node.data: .4f}   grad={node.grad: .4f}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# Part 1b: a worked example, by hand and by the engine
# -----------------------------------------------------------------------------
# One neuron, inputs x = [1, 2], one weight w = 1 shared by both inputs, no bias, sigmoid output, target 0.5.
# A classic example of the write-ups that teach backprop; its loss is called J there (L here).
#   z = w*1 + w*2 = 3,   a = sigmoid(z) = 0.9526,   J = (0.5 - a)^2 = 0.2048.
# Chain rule, one factor per step from J back to w:
#   dJ/da = -2 (0.5 - a)             = 0.9051
#   da/dz = a (1 - a)                = 0.0452     (sigmoid' written through sigmoid itself)
#   dz/dw = 1 + 2                    = 3          (w is used twice; the two uses add)
#   dJ/dw = 0.9051 * 0.0452 * 3      = 0.1227
# The engine, the hand computation, torch, and finite differences (J(w+h) - J(w-h)) / 2h all give 0.1227
# (tests/test_micrograd.py). The 0.248 one write-up reports is wrong: notebooks/05_errata.ipynb shows why.
#
# Built from Values, the example has a few more nodes than the formulas. Plain numbers (1.0, 2.0, 0.5) become
# leaf Values. And 0.5 - a has a plain number on the left, so Python calls a.__rsub__(0.5), which computes
# -a + 0.5 = a * (-1) + 0.5: one more leaf, -1.0, and one more node, a * (-1).


def worked_example():
    """Build the example neuron from Values and run backward. Returns (w, J)."""
    w = Value(1.0, label="w")
    z = w * 1.0 + w * 2.0
    z.label = "z"
    a = z.sigmoid()
    a.label = "a"
    J = (0.5 - a) ** 2
    J.label = "J"
    J.backward()
    return w, J


def worked_example_by_hand():
    """dJ/dw of the example neuron, straight from the chain rule above."""
    a = 1.0 / (1.0 + math.exp(-3.0))  # sigmoid(3)
    return -2.0 * (0.5 - a) * a * (1.0 - a) * (1.0 + 2.0)


# -----------------------------------------------------------------------------
# Part 2: a neural-network library made of Values
# -----------------------------------------------------------------------------
# A neuron computes f(w . x + b). A layer is neurons side by side, an MLP is layers one after another. The
# engine already knows how to differentiate all of it, so the library is only bookkeeping.

# relu, tanh and sigmoid are the choices for hidden layers. "linear" (f(v) = v) is for the output layer: its raw
# scores go straight into the loss.
ACTIVATIONS = {
    "relu": Value.relu,
    "tanh": Value.tanh,
    "sigmoid": Value.sigmoid,
    "linear": lambda v: v,
}


class Module:
    """Anything with trainable Values: it can list them and reset their gradients."""

    def parameters(self):
        return []

    def zero_grad(self):
        # backward() adds to .grad, so gradients from the previous step must be cleared first
        for p in self.parameters():
            p.grad = 0.0


class Neuron(Module):
    """out = f(w . x + b) for one input vector x."""

    def __init__(self, nin, activation="relu", rng=random):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        # Random starting weights break the symmetry: two neurons that start equal (the same incoming weights
        # and the same outgoing weights) get equal gradients, so they stay equal forever.
        # (MLP passes rng = random.Random(seed), so one seed fixes every weight.)
        # uniform(-1, 1) is the simplest choice and is fine for the shallow nets built from Values, though it does
        # not keep the scale: with variance 1/3 per weight, the sum w . x of n_in inputs has variance
        # n_in / 3 times their mean square, and relu keeps half of a symmetric sum's square, so each layer
        # multiplies the mean square of the activations by about n_in / 6 (x2.7 for 16 inputs).
        self.w = [Value(rng.uniform(-1.0, 1.0), label="w") for _ in range(nin)]
        self.b = Value(0.0, label="b")
        self.activation = activation

    def __call__(self, x):
        z = self.b
        for wi, xi in zip(self.w, x, strict=True):
            z = z + wi * xi
        return ACTIVATIONS[self.activation](z)

    def parameters(self):
        return self.w + [self.b]


class Layer(Module):
    """`nout` neurons, each looking at the same `nin` inputs."""

    def __init__(self, nin, nout, activation="relu", rng=random):
        self.neurons = [Neuron(nin, activation, rng) for _ in range(nout)]

    def __call__(self, x):
        return [neuron(x) for neuron in self.neurons]

    def parameters(self):
        return [p for neuron in self.neurons for p in neuron.parameters()]


class MLP(Module):
    """Layers of sizes `nouts`; `activation` on the hidden layers, the last layer linear (raw scores)."""

    def __init__(self, nin, nouts, activation="relu", seed=0):
        rng = random.Random(seed)
        self.activation = activation
        sizes = [nin] + list(nouts)
        self.layers = [
            Layer(sizes[i], sizes[i + 1], activation if i < len(nouts) - 1 else "linear", rng)
            for i in range(len(nouts))
        ]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x[0] if len(x) == 1 else x  # one output: the Value itself, ready for loss arithmetic

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]


# Training. One step, repeated until the loss L stops falling:
#   forward:   from the current parameters, compute the outputs and L (a new graph each step);
#   backward:  zero_grad(), then L.backward(), which sets p.grad = dL/dp for every parameter p;
#   update:    p.data -= lr * p.grad   for every p.
# dL/dp points the way in which L grows fastest, so a small step against it lowers L. lr, the learning rate, is
# how far each step goes: too small and training crawls, too large and L jumps around or grows. This is
# gradient descent; it is called SGD (stochastic gradient descent) even when, as here, every step sees all the
# data. Two refinements change only the update:
#   momentum: step along a running sum of past gradients, so steps grow along a direction that stays the same
#             and zig-zags cancel out;
#   a step size per entry (RMSprop, Adam): divide each entry's step by a running root-mean-square of its
#             gradient, so entries with large gradients take smaller steps and entries with small ones larger.


# -----------------------------------------------------------------------------
# Part 3: the same math, vectorised with NumPy
# -----------------------------------------------------------------------------
# The Value-MLP builds hundreds of nodes per example. With matrices, a layer for a whole batch (several examples
# at once, one per row of H) is one product:
#   Z = H W + b,   H_next = f(Z)        H: (batch, n_in)   W: (n_in, n_out)   b: (n_out,)   Z: (batch, n_out)
# and its backward pass, given dL/dH_next, is four lines of the chain rule:
#   dL/dZ = dL/dH_next * f'(Z)          element-wise, because f acts on each entry alone
#   dL/dW = H^T dL/dZ                   (n_in, n_out): dL/dW_ij = sum over b of H_bi dL/dZ_bj, since W_ij
#                                       moves every Z_bj with slope H_bi; the sum over b is that product
#   dL/db = sum over the batch of dL/dZ
#   dL/dH = dL/dZ W^T                   H_bi moves every Z_bj with slope W_ij; to the layer below


def sigmoid(z):
    # sigma(z) = 1 / (1 + e^-z) = exp(-ln(1 + e^-z)); logaddexp(0, -z) = ln(1 + e^-z) cannot overflow.
    # Value.sigmoid branches on the sign; an array has no one sign, and np.where would still compute e^-z for
    # every entry, overflow included, so here one formula that is safe everywhere does the job.
    return np.exp(-np.logaddexp(0.0, -z))


def sigmoid_prime(z):
    s = sigmoid(z)
    return s * (1.0 - s)  # sigma'(z) = sigma(z) (1 - sigma(z))


def relu(z):
    return np.maximum(z, 0.0)


def relu_prime(z):
    return (z > 0).astype(z.dtype)  # relu'(z) = 1[z > 0]


def tanh_prime(z):
    return 1.0 - np.tanh(z) ** 2  # tanh'(z) = 1 - tanh(z)^2


# The same names as the Value library's ACTIVATIONS, so that any Value-MLP has a NumPy copy.
NUMPY_ACTIVATIONS = {
    "sigmoid": (sigmoid, sigmoid_prime),
    "relu": (relu, relu_prime),
    "tanh": (np.tanh, tanh_prime),
    "linear": (lambda z: z, np.ones_like),
}


class NumpyMLP:
    """Fully connected layers `sizes[0] -> ... -> sizes[-1]`; `activation` on hidden layers, linear output."""

    def __init__(self, sizes, activation="relu", seed=0):
        if activation not in NUMPY_ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(NUMPY_ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.f, self.f_prime = NUMPY_ACTIVATIONS[activation]
        rng = np.random.default_rng(seed)
        # Weights ~ N(0, gain / n_in) keep the activations' scale roughly equal from layer to layer;
        # gain 2 for relu makes up for relu zeroing half of its inputs (He initialisation).
        # The Value-MLP's uniform(-1, 1) would do for the demo, but NumPy nets can be deep and wide, and there its
        # factor of about n_in / 6 per layer would compound.
        gain = 2.0 if activation == "relu" else 1.0
        self.params = []  # [W1, b1, W2, b2, ...]: the order of the gradients and of the optimizers' state
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            self.params += [rng.normal(0.0, math.sqrt(gain / n_in), (n_in, n_out)), np.zeros(n_out)]

    def forward(self, X):
        """X (batch, sizes[0]) -> output (batch, sizes[-1]). Keeps each layer's H and Z for backward."""
        self.cache = []
        H = X
        n_layers = len(self.params) // 2
        for i in range(n_layers):
            W, b = self.params[2 * i], self.params[2 * i + 1]
            Z = H @ W + b  # (batch, n_out)
            self.cache.append((H, Z))
            H = Z if i == n_layers - 1 else self.f(Z)
        return H

    def backward(self, d_out):
        """d_out = dL/d(output) of the last forward(); returns dL/dp for each p in self.params."""
        # Layer by layer from the top: the four chain-rule lines in Part 3's opening comment.
        grads = [None] * len(self.params)
        dH = d_out
        for i in reversed(range(len(self.cache))):
            H, Z = self.cache[i]
            dZ = dH if i == len(self.cache) - 1 else dH * self.f_prime(Z)  # the output layer has no f
            grads[2 * i] = H.T @ dZ  # (n_in, n_out)
            grads[2 * i + 1] = dZ.sum(axis=0)  # (n_out,)
            dH = dZ @ self.params[2 * i].T  # (batch, n_in)
        return grads


def mse_loss(pred, target):
    """L = mean of (pred - target)^2 over all N entries. Returns L and dL/dpred = 2 (pred - target) / N.

    The demos in this file classify, so they use cross-entropy instead; tests/test_micrograd.py and
    notebooks/02_activations_and_backprop.ipynb use this one."""
    diff = pred - target
    return np.mean(diff**2), 2.0 * diff / diff.size


# A classifier's last layer gives one raw score per class, any real number: the logits z. softmax turns them
# into probabilities, positive and summing to 1:
#   softmax(z)_j = e^(z_j) / sum_k e^(z_k)
# The cross-entropy loss of one example with label y is -ln softmax(z)_y, small when the right class gets a
# probability near 1. onehot(y) is the vector with 1 at index y and 0 elsewhere: onehot(y)_j = [j = y], where
# [j = y] means 1 if j = y, else 0.


def cross_entropy_loss(logits, labels):
    """L = mean over examples of -log softmax(logits)[label].

    Returns L and dL/dlogits = (softmax(logits) - onehot(labels)) / batch."""
    # Why that gradient: for one example with logits z and label y, L = -z_y + ln sum_j e^(z_j), so
    # dL/dz_j = e^(z_j) / sum_k e^(z_k) - [j = y] = softmax(z)_j - onehot(y)_j; the mean divides by batch.
    n = len(labels)
    # Subtracting a constant c from every logit leaves the softmax unchanged:
    #   e^(z_j - c) / sum_k e^(z_k - c) = e^-c e^(z_j) / (e^-c sum_k e^(z_k)) = softmax(z)_j.
    # With c = max_k z_k every exponent is <= 0, so exp cannot overflow.
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (batch, n_classes)
    loss = -log_probs[np.arange(n), labels].mean()
    d_logits = np.exp(log_probs)
    d_logits[np.arange(n), labels] -= 1.0
    return loss, d_logits / n


# The optimizers update the parameter arrays in place, given the gradients in the same order. The formulas are
# torch.optim's (checked by the tests to 1e-10).


class SGD:
    """buf = momentum * buf + g;  p = p - lr * buf.   (buf starts at 0, so buf = g at step 1.)"""

    def __init__(self, params, lr=0.1, momentum=0.0):
        self.params, self.lr, self.momentum = params, lr, momentum
        self.bufs = [np.zeros_like(p) for p in params]

    def step(self, grads):
        for p, g, buf in zip(self.params, grads, self.bufs, strict=True):
            buf *= self.momentum
            buf += g
            p -= self.lr * buf


class RMSprop:
    """v = alpha * v + (1 - alpha) g^2;  p = p - lr * g / (sqrt(v) + eps): a step size per entry."""

    def __init__(self, params, lr=0.01, alpha=0.99, eps=1e-8):
        self.params, self.lr, self.alpha, self.eps = params, lr, alpha, eps
        self.vs = [np.zeros_like(p) for p in params]

    def step(self, grads):
        for p, g, v in zip(self.params, grads, self.vs, strict=True):
            v *= self.alpha
            v += (1.0 - self.alpha) * g * g
            p -= self.lr * g / (np.sqrt(v) + self.eps)


class Adam:
    """Momentum (m) plus RMSprop (v), both bias-corrected because they start at 0:
    m = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) g^2;   m^ = m / (1 - b1^t);   v^ = v / (1 - b2^t);
    p = p - lr * m^ / (sqrt(v^) + eps).

    These are torch's two conventions for momentum. Adam's m is an average, weighted (1 - b1): for a steady
    gradient g it tends to g. SGD's buf = momentum * buf + g is a sum: it tends to g / (1 - momentum). So the
    two differ in scale by 1 / (1 - beta), 10x for 0.9."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.eps = params, lr, eps
        self.beta1, self.beta2 = betas
        self.ms = [np.zeros_like(p) for p in params]
        self.vs = [np.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads):
        self.t += 1
        for p, g, m, v in zip(self.params, grads, self.ms, self.vs, strict=True):
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * g * g
            m_hat = m / (1.0 - self.beta1**self.t)
            v_hat = v / (1.0 - self.beta2**self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


OPTIMIZERS = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam}


def value_mlp_to_numpy(model):
    """A NumpyMLP with the weights of a Value-MLP: the same function, evaluated a whole batch at a time."""
    sizes = [len(model.layers[0].neurons[0].w)] + [len(layer.neurons) for layer in model.layers]
    copy = NumpyMLP(sizes, model.activation)
    for i, layer in enumerate(model.layers):
        # neuron j's weights form column j of W: Z[:, j] = H @ W[:, j] + b[j]
        copy.params[2 * i][:] = [[neuron.w[k].data for neuron in layer.neurons] for k in range(sizes[i])]
        copy.params[2 * i + 1][:] = [neuron.b.data for neuron in layer.neurons]
    return copy


# -----------------------------------------------------------------------------
# Part 4: the demo: two toy data sets, two training loops, a picture of what was learned
# -----------------------------------------------------------------------------


def make_moons(n=100, noise=0.1, seed=0):
    """Two interleaving half circles. Returns X (n, 2) and labels y (n,) in {0, 1}."""
    rng = np.random.default_rng(seed)
    n_top = n // 2
    angle_top = np.linspace(0.0, np.pi, n_top)
    angle_bottom = np.linspace(0.0, np.pi, n - n_top)
    top = np.stack([np.cos(angle_top), np.sin(angle_top)], axis=1)  # arc over (0, 0), radius 1
    bottom = np.stack([1.0 - np.cos(angle_bottom), 0.5 - np.sin(angle_bottom)], axis=1)  # flipped, shifted
    X = np.concatenate([top, bottom]) + noise * rng.standard_normal((n, 2))
    y = np.concatenate([np.zeros(n_top, dtype=int), np.ones(n - n_top, dtype=int)])
    return X, y


def make_spiral(n_per_class=100, n_classes=3, seed=0, noise=0.2):
    """`n_classes` interleaved spiral arms. Returns X (n_per_class * n_classes, 2) and labels y (0, 1, ..)."""
    rng = np.random.default_rng(seed)
    X = np.zeros((n_per_class * n_classes, 2))
    y = np.repeat(np.arange(n_classes), n_per_class)
    for k in range(n_classes):
        radius = np.linspace(0.0, 1.0, n_per_class)  # out from the centre along the arm
        # each arm sweeps its own 4 radians, with a little noise in the angle
        angle = np.linspace(4.0 * k, 4.0 * (k + 1), n_per_class) + noise * rng.standard_normal(n_per_class)
        X[y == k] = radius[:, None] * np.stack([np.sin(angle), np.cos(angle)], axis=1)
    return X, y


def value_mlp_accuracy(model, X, y):
    """Fraction of points on the right side: score > 0 means class 1."""
    correct = [(model(list(x)).data > 0) == (label == 1) for x, label in zip(X, y, strict=True)]
    return sum(correct) / len(correct)


def train_moons(X, y, steps=100, hidden=(16, 16), l2=1e-4, seed=0, log_every=0):
    """Train a Value-MLP on 2-class data (labels 0/1) with the hinge loss and plain SGD.

    Returns (model, history): history["loss"] and history["accuracy"] hold one entry per step, measured on
    the scores of that step's forward pass (before its update)."""
    n = len(X)
    inputs = [[float(a), float(b)] for a, b in X]
    signs = [1.0 if label == 1 else -1.0 for label in y]  # s_i: the hinge loss wants -1 / +1, not 0 / 1
    model = MLP(2, [*hidden, 1], activation="relu", seed=seed)
    params = model.parameters()
    history = {"loss": [], "accuracy": []}
    for step in range(steps):
        scores = [model(x) for x in inputs]
        # L = mean_i max(0, 1 - s_i score_i) + l2 * sum_p p^2
        # The hinge term is 0 once a point is on its side by a margin of 1; the L2 penalty keeps the
        # weights small, the boundary smooth.
        margins = [(1.0 - s * score).relu() for s, score in zip(signs, scores, strict=True)]
        data_loss = sum(margins) * (1.0 / n)
        loss = data_loss + l2 * sum(p * p for p in params)
        model.zero_grad()
        loss.backward()
        lr = 1.0 - 0.9 * step / steps  # decays linearly from 1.0 towards 0.1
        for p in params:
            p.data -= lr * p.grad  # gradient descent: p = p - lr dL/dp
        correct = [(score.data > 0) == (s > 0) for s, score in zip(signs, scores, strict=True)]
        accuracy = sum(correct) / n
        history["loss"].append(loss.data)
        history["accuracy"].append(accuracy)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  moons step {step:4d}   loss {loss.data:.4f}   accuracy {accuracy:.0%}")
    return model, history


def train_numpy_mlp(X, y, steps=1000, activation="relu", optimizer="adam", lr=None, hidden=(100,), seed=0,
                    log_every=0):
    """Train a NumpyMLP classifier on X (n, d), labels y in 0..n_classes-1: cross-entropy, full batch.

    Returns (model, history), history as in train_moons."""
    n_classes = int(y.max()) + 1
    model = NumpyMLP([X.shape[1], *hidden, n_classes], activation, seed)  # one hidden layer of 100 fits the spiral
    if lr is None:
        # Tuned on the spiral for 1000 full-batch steps, larger than the classes' defaults: with Adam's 1e-3 the
        # loss ends at 0.13 instead of 0.02; SGD's 0.1 also ends higher; RMSprop's default 0.01 is already right.
        lr = {"sgd": 0.5, "rmsprop": 0.01, "adam": 0.01}[optimizer]
    extra = {"momentum": 0.9} if optimizer == "sgd" else {}
    opt = OPTIMIZERS[optimizer](model.params, lr=lr, **extra)
    history = {"loss": [], "accuracy": []}
    for step in range(steps):
        logits = model.forward(X)
        loss, d_logits = cross_entropy_loss(logits, y)
        opt.step(model.backward(d_logits))
        accuracy = float(np.mean(logits.argmax(axis=1) == y))
        history["loss"].append(loss)
        history["accuracy"].append(accuracy)
        if log_every and (step % log_every == 0 or step == steps - 1):
            print(f"  numpy-mlp step {step:4d}   loss {loss:.4f}   accuracy {accuracy:.0%}")
    return model, history


def numpy_mlp_accuracy(model, X, y):
    """Fraction of points whose highest-scoring class is their label."""
    return float(np.mean(model.forward(X).argmax(axis=1) == y))


def plot_decision_boundary(predict, X, y, path=None, title="", ax=None):
    """Colour the plane by predict(points (m, 2)) -> class ids (m,), with the data on top.

    Draws into `ax` if given, else into a new figure; saves a PNG to `path` if given; returns the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: only plots need matplotlib
    from matplotlib.figure import Figure

    if ax is None:
        fig = Figure(figsize=(5, 5))
        FigureCanvasAgg(fig)  # Agg draws straight to a file: no window, no display needed
        ax = fig.add_subplot()
    lo, hi = X.min(axis=0) - 0.5, X.max(axis=0) + 0.5
    gx, gy = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))  # (200, 200) each
    classes = predict(np.stack([gx.ravel(), gy.ravel()], axis=1)).reshape(gx.shape)
    # class k gets the colour of value k on both layers: the bands of the fill are [k - 0.5, k + 0.5]
    n_classes = int(max(y.max(), classes.max())) + 1
    ax.contourf(gx, gy, classes, levels=np.arange(n_classes + 1) - 0.5, cmap="coolwarm", alpha=0.35)
    ax.scatter(X[:, 0], X[:, 1], c=y, cmap="coolwarm", vmin=-0.5, vmax=n_classes - 0.5, s=18, edgecolors="k")
    ax.set_title(title)
    if path is not None:
        ax.figure.savefig(path, dpi=100)
    return ax.figure


# -----------------------------------------------------------------------------
# Aside: why the demos are fast (a reader may skip it)
# -----------------------------------------------------------------------------
# The classic design of a scalar engine (benchmarks/bench_micrograd.py has a copy to compare against) gives each
# node a closure that pushes its gradient to its inputs. Here a node stores its local derivatives as plain
# numbers and the one loop in backward() does the pushing: no closure allocated per op, no function call per
# node on the way back, and `__slots__` drops each node's attribute dict. The cost: every op's backward rule must
# be "one number per input" (true here), and local derivatives are computed even when no backward pass follows.
# The benchmark measures the difference, and one more: Python's cycle collector, which this graph (having no
# reference cycles) does not need, and which the command line (Part 5) pauses; RESULTS.md has the figures.


# -----------------------------------------------------------------------------
# Part 5: running it (the command line; nothing new to learn here)
# -----------------------------------------------------------------------------


class OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message):  # bad input: one line on stderr and exit code 2, not argparse's usage block
        self.exit(2, f"error: {message} (see --help)\n")


def positive_int(text):
    try:
        if int(text) >= 1:
            return int(text)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")


def parse_args(argv=None):
    p = OneLineErrorParser(prog="micrograd.py",
                           description="Train a Value-MLP on two moons and a NumPy MLP on a 3-class spiral.")
    p.add_argument("--seed", type=int, default=0, help="data and weights (default %(default)s)")
    p.add_argument("--moons_steps", type=positive_int, default=100,
                   help="SGD steps for the Value-MLP on two moons (default %(default)s)")
    p.add_argument("--spiral_steps", type=positive_int, default=1000,
                   help="optimizer steps for the NumPy MLP on the spiral (default %(default)s)")
    p.add_argument("--activation", choices=["relu", "tanh", "sigmoid"], default="relu",
                   help="hidden activation of the NumPy MLP (default %(default)s)")
    p.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam",
                   help="optimizer of the NumPy MLP (default %(default)s; sgd uses momentum 0.9)")
    p.add_argument("--plot", action="store_true", help="save decision-boundary PNGs to --out_dir")
    p.add_argument("--out_dir", default="out/micrograd", help="folder for the plots (default %(default)s)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out_dir)
    if args.plot:
        try:  # before training, so a bad --out_dir fails at once
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            sys.exit(f"error: cannot create --out_dir {out}: {e.strerror}")
    start = time.perf_counter()

    print("Worked example: one sigmoid neuron, inputs [1, 2], shared weight w = 1, J = (0.5 - sigmoid(z))^2")
    w, J = worked_example()
    print(trace_graph(J))
    print(f"dJ/dw: engine {w.grad:.4f}, chain rule by hand {worked_example_by_hand():.4f}\n")

    print(f"Value-MLP(2, [16, 16, 1]) on two moons: 100 points, hinge loss + L2, {args.moons_steps} SGD steps")
    moons_X, moons_y = make_moons(100, 0.1, args.seed)
    # Each step builds and drops a graph of tens of thousands of Values with no reference cycles: reference
    # counting frees them, and Python's cycle collector would only walk them in vain, so it is paused here
    # (benchmarks/bench_micrograd.py measures the difference).
    gc.disable()
    try:
        moons_model, _ = train_moons(moons_X, moons_y, args.moons_steps, seed=args.seed, log_every=10)
    finally:
        gc.enable()
    moons_accuracy = value_mlp_accuracy(moons_model, moons_X, moons_y)

    print(f"\nNumPy MLP(2, [100, 3]), {args.activation}, on the spiral: 300 points, 3 classes, "
          f"cross-entropy, {args.optimizer}, {args.spiral_steps} steps")
    spiral_X, spiral_y = make_spiral(100, 3, args.seed)
    spiral_model, _ = train_numpy_mlp(spiral_X, spiral_y, args.spiral_steps, args.activation, args.optimizer,
                                      seed=args.seed, log_every=max(1, args.spiral_steps // 10))
    spiral_accuracy = numpy_mlp_accuracy(spiral_model, spiral_X, spiral_y)

    print(f"\nfinal training accuracy: moons (Value-MLP) {moons_accuracy:.1%}, spiral (NumPy MLP) "
          f"{spiral_accuracy:.1%}   [{time.perf_counter() - start:.1f} s]")

    if args.plot:
        # the Value-MLP is evaluated on 40,000 grid points through its NumPy twin: same weights, same function
        moons_twin = value_mlp_to_numpy(moons_model)
        plot_decision_boundary(lambda P: (moons_twin.forward(P)[:, 0] > 0).astype(int), moons_X, moons_y,
                               out / "moons.png", f"Value-MLP on two moons: {moons_accuracy:.0%}")
        plot_decision_boundary(lambda P: spiral_model.forward(P).argmax(axis=1), spiral_X, spiral_y,
                               out / "spiral.png", f"NumPy MLP on the spiral: {spiral_accuracy:.1%}")
        print(f"saved {out / 'moons.png'} and {out / 'spiral.png'}")


if __name__ == "__main__":
    main()
