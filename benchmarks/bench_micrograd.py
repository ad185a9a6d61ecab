"""Time micrograd.py's engine against the classic closure-based design on the moons demo workload.

Workload (the same for all): MLP(2, [16, 16, 1]) with relu, 100 two-moons points, max-margin (hinge) loss plus
an L2 penalty, 100 plain SGD steps; the graph is rebuilt every step, forward + backward + update all timed.
All start from the same weights (seed 0) and the script checks that they end with the same loss.

    python benchmarks/bench_micrograd.py              # 3 runs each, median
    python benchmarks/bench_micrograd.py --runs 5 --steps 50

Two things decide the time besides the engine's own work per node:
- Python's cycle collector. Python frees an object as soon as its reference count drops to 0. Separately,
  every few hundred allocations, its cycle collector walks the live objects in search of reference cycles,
  which counting cannot free. micrograd.py's graph has none (a node points only at its inputs), so reference
  counting alone frees each step's graph, and the collector's walks over tens of thousands of live nodes are
  wasted: the third row below pauses it. The classic design cannot: its graph has cycles, node -> closure ->
  node, which only the collector frees, so pausing it would pile up every step's graph in memory.
- BLAS threads, for micrograd.py's NumPy MLP (not timed here): NumPy hands matrix products to BLAS, which may
  split a product over several threads. The spiral's products (300 rows, 100 hidden units) are small enough
  that BLAS keeps each on one thread: at that size a hand-off between threads would cost more than the second
  core saves.
"""

import argparse
import gc
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import micrograd  # noqa: E402

# ------------------------------------------------------------------------------------------------------------
# Reference: the classic design, written here for this benchmark (not copied from anywhere).
# Each node keeps its inputs in a set and a `_backward` closure made at forward time that adds its local
# derivative times its own grad to its inputs; backward() sorts the graph with a recursive depth-first search
# (so deep graphs hit RecursionError) and then calls every closure in reverse order.
# ------------------------------------------------------------------------------------------------------------


class ClassicValue:
    def __init__(self, data, children=(), op=""):
        self.data = data
        self.grad = 0.0
        self._backward = lambda: None
        self._prev = set(children)
        self._op = op

    def __add__(self, other):
        other = other if isinstance(other, ClassicValue) else ClassicValue(other)
        out = ClassicValue(self.data + other.data, (self, other), "+")

        def _backward():
            self.grad += out.grad
            other.grad += out.grad

        out._backward = _backward
        return out

    def __mul__(self, other):
        other = other if isinstance(other, ClassicValue) else ClassicValue(other)
        out = ClassicValue(self.data * other.data, (self, other), "*")

        def _backward():
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad

        out._backward = _backward
        return out

    def __pow__(self, k):
        out = ClassicValue(self.data**k, (self,), f"**{k}")

        def _backward():
            self.grad += k * self.data ** (k - 1) * out.grad

        out._backward = _backward
        return out

    def relu(self):
        out = ClassicValue(self.data if self.data > 0 else 0.0, (self,), "relu")

        def _backward():
            self.grad += (out.data > 0) * out.grad

        out._backward = _backward
        return out

    def backward(self):
        order, seen = [], set()

        def visit(node):
            if node not in seen:
                seen.add(node)
                for child in node._prev:
                    visit(child)
                order.append(node)

        visit(self)
        self.grad = 1.0
        for node in reversed(order):
            node._backward()

    def __neg__(self):
        return self * -1

    def __radd__(self, other):
        return self + other

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return other + (-self)

    def __rmul__(self, other):
        return self * other


class ClassicNeuron:
    def __init__(self, weights, bias, nonlinear):
        self.w = [ClassicValue(w) for w in weights]
        self.b = ClassicValue(bias)
        self.nonlinear = nonlinear

    def __call__(self, x):
        z = sum((wi * xi for wi, xi in zip(self.w, x, strict=True)), self.b)
        return z.relu() if self.nonlinear else z

    def parameters(self):
        return self.w + [self.b]


class ClassicMLP:
    """Built from the weights of a micrograd.MLP, so both designs start from the same point."""

    def __init__(self, model):
        last = len(model.layers) - 1
        self.layers = [
            [ClassicNeuron([w.data for w in n.w], n.b.data, i < last) for n in layer.neurons]
            for i, layer in enumerate(model.layers)
        ]

    def __call__(self, x):
        for layer in self.layers:
            x = [neuron(x) for neuron in layer]
        return x[0] if len(x) == 1 else x

    def parameters(self):
        return [p for layer in self.layers for n in layer for p in n.parameters()]


@contextmanager
def cycle_collector_paused():
    """Switch off Python's cycle collector inside a `with` block, then restore it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# ------------------------------------------------------------------------------------------------------------
# The workload, written once for both designs (the loop of micrograd.train_moons, without its bookkeeping)
# ------------------------------------------------------------------------------------------------------------


def train(model, inputs, signs, steps, l2=1e-4):
    params = model.parameters()
    for step in range(steps):
        scores = [model(x) for x in inputs]
        margins = [(1.0 - s * score).relu() for s, score in zip(signs, scores, strict=True)]
        data_loss = sum(margins) * (1.0 / len(inputs))
        loss = data_loss + l2 * sum(p * p for p in params)
        for p in params:
            p.grad = 0.0
        loss.backward()
        lr = 1.0 - 0.9 * step / steps
        for p in params:
            p.data -= lr * p.grad
    return loss.data


def time_one(make_model, paused, inputs, signs, steps):
    model = make_model()
    start = time.perf_counter()
    if paused:
        with cycle_collector_paused():
            final_loss = train(model, inputs, signs, steps)
    else:
        final_loss = train(model, inputs, signs, steps)
    return time.perf_counter() - start, final_loss


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs per design; the median is reported")
    parser.add_argument("--steps", type=int, default=100, help="SGD steps per run")
    args = parser.parse_args()
    if args.runs < 1 or args.steps < 1:
        sys.exit("bench_micrograd.py: error: --runs and --steps must be positive")

    X, y = micrograd.make_moons(100, 0.1, 0)
    inputs = [[float(a), float(b)] for a, b in X]
    signs = [1.0 if label == 1 else -1.0 for label in y]
    # (name, model maker, cycle collector paused?). The classic design makes reference cycles (node -> closure
    # -> node), so it cannot run with the collector paused; micrograd.py's graph has none (see the docstring).
    classic = ("classic: closures, recursive sort", lambda: ClassicMLP(micrograd.MLP(2, [16, 16, 1])), False)
    ours = ("micrograd.py, cycle collector on", lambda: micrograd.MLP(2, [16, 16, 1]), False)
    ours_paused = ("micrograd.py, cycle collector paused", lambda: micrograd.MLP(2, [16, 16, 1]), True)
    designs = [classic, ours, ours_paused]
    times = {name: [] for name, _, _ in designs}
    losses = {}
    for _ in range(args.runs):  # alternate the designs, so a burst of load elsewhere hits all of them
        for name, make_model, paused in designs:
            seconds, losses[name] = time_one(make_model, paused, inputs, signs, args.steps)
            times[name].append(seconds)

    print(f"moons workload: MLP(2,[16,16,1]), 100 points, hinge + L2, {args.steps} SGD steps, "
          f"median of {args.runs} runs (python {sys.version.split()[0]})")
    print(f"{'design':<42}{'median s':>10}{'min s':>9}{'speed-up':>10}{'final loss':>13}")
    baseline = statistics.median(times[classic[0]])
    for name, _, _ in designs:
        median = statistics.median(times[name])
        fastest = min(times[name])
        print(f"{name:<42}{median:>10.2f}{fastest:>9.2f}{baseline / median:>9.2f}x{losses[name]:>13.6f}")
    if max(losses.values()) - min(losses.values()) > 1e-9:
        sys.exit(f"the designs disagree on the final loss: {losses}")


if __name__ == "__main__":
    main()
