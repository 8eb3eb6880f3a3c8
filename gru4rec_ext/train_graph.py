"""Capture and replay of the training step as a CUDA graph, with a check and an eager fallback.

`GraphRunner(body, state, backend)` runs `body()` (one training step that reads and writes only
static tensors: `StaticStep.body`) once per call:

1. the first call runs it eagerly (the warm-up: lazy initialisations, the sampler's cache);
2. the second call captures it (`backend.capture`) and checks the capture on its first replay: from
   the same state (every tensor of `state` and the random generator's state) it runs the eager step,
   keeps its results, restores the state and replays the graph; the two must agree to float
   tolerance (the same kernels: in practice bit for bit);
3. later calls replay the graph.

If the capture raises, or the replay disagrees with the eager step, it logs ONE warning that says
why, keeps the eager step's results (never the graph's) and runs every later step eagerly: no
silently wrong weights. One step per graph: the host must refill the sampler's cache between steps
(`PopularitySampler.reserve`), which a graph of several steps could not do.

The backend is `CudaGraphBackend` on CUDA (`torch.cuda.CUDAGraph`). `EagerStandIn` is a stand-in
whose "graph" is the eager body itself, so that the logic above runs and is tested on the CPU
(tests inject backends that fail to capture or replay wrongly).
"""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger("gru4rec_ext")


class CudaGraphBackend:
    """Capture with `torch.cuda.CUDAGraph` on `device`; the RNG is the device's default generator
    (dropout masks; graph-safe: each replay advances its philox offset)."""

    def __init__(self, device):
        self.device = torch.device(device)

    def capture(self, body):
        """Captures body() into a CUDA graph; returns its replay function."""
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize(self.device)
        with torch.cuda.graph(graph):
            body()
        torch.cuda.synchronize(self.device)
        self.graph = graph  # kept alive with its memory pool
        return graph.replay

    def get_rng_state(self):
        return torch.cuda.get_rng_state(self.device)

    def set_rng_state(self, state) -> None:
        torch.cuda.set_rng_state(state, self.device)

    def warm_up(self, body) -> None:
        """The eager warm-up before a capture, on a side stream (as torch's docs advise)."""
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            body()
        torch.cuda.current_stream(self.device).wait_stream(stream)


class EagerStandIn:
    """A CPU stand-in for `CudaGraphBackend`: the captured "graph" replays the eager body, and the
    RNG is torch's CPU generator. It runs the capture / check / fallback logic without a GPU."""

    def capture(self, body):
        return body

    def get_rng_state(self):
        return torch.get_rng_state()

    def set_rng_state(self, state) -> None:
        torch.set_rng_state(state)

    def warm_up(self, body) -> None:
        body()


def _disagreement(name: str, graph_t: torch.Tensor, eager_t: torch.Tensor) -> str | None:
    """Why the replay's `graph_t` is not the eager step's `eager_t` (None when they agree)."""
    if graph_t.dtype.is_floating_point:
        eps = torch.finfo(graph_t.dtype).eps
        if torch.allclose(graph_t.double(), eager_t.double(), rtol=64 * eps, atol=64 * eps, equal_nan=True):
            return None
        err = (graph_t.double() - eager_t.double()).abs().max().item()
        return f"{name} differs by up to {err:.3g}"
    return None if torch.equal(graph_t, eager_t) else f"{name} differs"


class GraphRunner:
    """Runs `body` once per call: eager warm-up, then capture, checked replay, replays (see the module).

    state: [(name, tensor)], every tensor the step writes (parameters, optimizer state, hidden
    state, loss accumulator, counters), compared and restored by the check. `enabled=False`: eager
    always. After a fallback `mode` is "eager" and `fallback_reason` says why.
    """

    def __init__(self, body, state, backend, *, enabled: bool = True):
        self.body = body
        self.state = list(state)
        self.backend = backend
        self.mode = "warmup" if enabled else "eager"
        self.fallback_reason: str | None = None
        self._replay = None

    def __call__(self) -> None:
        if self.mode == "graph":
            self._replay()
        elif self.mode == "eager":
            self.body()
        elif self.mode == "warmup":
            self.backend.warm_up(self.body)
            self.mode = "capture"
        else:
            self._capture_and_check()

    def recapture(self) -> None:
        """Drop the graph (its static buffers changed); the next call captures and checks again."""
        if self.mode == "graph":
            self._replay = None
            self.mode = "capture"

    def _fall_back(self, why: str) -> None:
        self.fallback_reason = why
        self.mode = "eager"
        self._replay = None
        logger.warning("gru4rec_ext: CUDA graph disabled, training eagerly: %s", why)

    def _capture_and_check(self) -> None:
        try:
            replay = self.backend.capture(self.body)
        except Exception as exc:  # noqa: BLE001 - any failure: say why, train eagerly
            self._fall_back(f"the capture failed ({type(exc).__name__}: {exc})")
            self.body()
            return
        before = [t.clone() for _, t in self.state]
        rng = self.backend.get_rng_state()
        self.body()  # the eager step from this state
        eager = [t.clone() for _, t in self.state]
        eager_rng = self.backend.get_rng_state()
        for (_, t), b in zip(self.state, before):
            t.copy_(b)
        self.backend.set_rng_state(rng)
        try:
            replay()
            why = next((w for w in (_disagreement(n, t, e) for (n, t), e in zip(self.state, eager)) if w), None)
        except Exception as exc:  # noqa: BLE001
            why = f"the replay failed ({type(exc).__name__}: {exc})"
        else:
            if why is not None:
                why = f"its first replay disagrees with the eager step: {why}"
        if why is None:
            self._replay = replay
            self.mode = "graph"
            return
        for (_, t), e in zip(self.state, eager):  # keep the eager step's results
            t.copy_(e)
        self.backend.set_rng_state(eager_rng)
        self._fall_back(why)
