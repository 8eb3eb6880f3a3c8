"""One GRU4Rec training step (SPEC sections 3-5): the step room of the trainer.

One step: gather the input rows, run the GRU layers (autograd for the GRU part only), compute the
sampled loss of the output layer and its row-sparse gradient (`sampled_loss_forward` /
`sampled_loss_backward`), backpropagate `grad_hidden` into the GRU weights and the gathered input
rows, then update the touched item rows (one sparse update, duplicates summed) and the GRU weights
(dense; for one-hot input layer 0's weight_ih only on the columns of the step's items). `compute_step` is that sequence up to the updates; `TrainStep` is the whole step as the
epoch loop calls it: on the CPU with the compiled kernels one call of `gru4rec::train_step_`
(csrc/train_step.cpp, the same ops in the same order), else `compute_step` then `AdagradM`'s
updates. It keeps SPEC section 8's rules: samples come from a device-side cache through a device-side
offset, every shape is fixed (a valid mask and -1 indices at the epoch's tail), and nothing in the
step waits for the host.

`StaticStep` is the CUDA step: `gru4rec::step_inputs_` reads the step's inputs from the epoch
schedule on the device through a device-side step counter (and the samples through the sampler's
device-side offset) into static buffers, then one `gru4rec::train_step_` call (dedup=False: the B+K
candidate columns scored as they are) updates the model, and the new hidden state and the loss sum
are written into static tensors. Every tensor it reads or writes stays in place from step to step,
so `train_graph.GraphRunner` captures it as a CUDA graph and replays it.
"""
from __future__ import annotations

import torch

from .model import GRU4Rec
from .ops.train_step import train_step_ as _TRAIN_STEP  # one compiled call per step

_INPUT_MODES = {"shared": 0, "embedding": 1, "onehot": 2}  # gru4rec::train_step_'s input_mode


def fused_step_args(model: GRU4Rec, optimizer, output_loss: "OutputLoss", lr: float, momentum: float) -> tuple:
    """The arguments of `gru4rec::train_step_` after `hidden` (the same tensors from step to step)."""
    m, opt = model, optimizer
    names = ["Wy", "By"] + (["E"] if m.E is not None else [])
    gru_names = list(m.gru_parameters())
    params = {**m.gru_parameters(), "Wy": m.Wy, "By": m.By, "E": m.E}
    mom = (lambda n: [opt.mom[x] for x in n]) if momentum > 0 else (lambda n: [])
    return ([params[n].detach() for n in names], [opt.acc[n] for n in names], mom(names),
            [params[n].detach() for n in gru_names], [opt.acc[n] for n in gru_names], mom(gru_names),
            list(m._variant_codes), _INPUT_MODES[m.input_mode], m.dropout_p_embed, m.dropout_p_hidden,
            *output_loss.codes(), float(lr), float(momentum), opt.eps)


class OutputLoss:
    """Sampled loss of the output layer with row-sparse gradients, for one backend.

    `__call__(hidden [B,H], targets [B], samples [K], valid [B] or None, log_q [B+K] or None)` ->
    (loss [], grad_hidden [B,H], candidates [B+K], grad_weight_rows [B+K,H], grad_bias_rows [B+K]).
    """

    def __init__(self, model: GRU4Rec, *, loss: str, bpreg: float, logq: float, mask_accidental_hits: bool):
        self.model = model
        self.opts = dict(loss=loss, activation=model.activation, elu_alpha=model.elu_alpha, bpreg=float(bpreg),
                         logq=float(logq), mask_accidental_hits=bool(mask_accidental_hits))
        if model.backend == "kernels":
            from .ops.sampled_loss import sampled_loss_backward, sampled_loss_forward
            self._fwd, self._bwd = sampled_loss_forward, sampled_loss_backward
            self._call = self._kernels
        else:
            from .reference_loss import activation_code, loss_code, ranking_loss_from_rows
            act, alpha = activation_code(model.activation, model.elu_alpha)
            self._ref = ranking_loss_from_rows
            self._ref_opts = dict(loss_code_=loss_code(loss), activation_code_=act, elu_alpha=alpha,
                                  bpreg=float(bpreg), logq=float(logq), mask_accidental_hits=bool(mask_accidental_hits))
            self._call = self._reference

    def __call__(self, hidden, targets, samples, valid, log_q):
        return self._call(hidden, targets, samples, valid, log_q)

    def codes(self) -> tuple:
        """(loss, activation, elu_alpha, bpreg, logq, mask_hits) as the compiled ops take them."""
        from .reference_loss import activation_code, loss_code
        act, alpha = activation_code(self.model.activation, self.model.elu_alpha)
        o = self.opts
        return (loss_code(o["loss"]), act, alpha, o["bpreg"], o["logq"], o["mask_accidental_hits"])

    def _kernels(self, hidden, targets, samples, valid, log_q):
        m = self.model
        with torch._C._AutoDispatchBelowAutograd():  # no gradient is tracked: skip the ops' autograd wrappers
            # Each distinct candidate item is gathered, scored and updated once (CPU; same loss).
            state = self._fwd(hidden, m.Wy.detach(), m.By.detach(), targets, samples, log_q=log_q, valid=valid,
                              unique_candidates=True, **self.opts)
            grad_hidden, candidates, grad_w, grad_b = self._bwd(state)
        return state.loss, grad_hidden, candidates, grad_w, grad_b

    def _reference(self, hidden, targets, samples, valid, log_q):
        # Score against the gathered candidate rows so that autograd yields row gradients directly.
        m = self.model
        candidates = torch.cat([targets, samples])
        with torch.enable_grad():
            w = m.Wy.detach().index_select(0, candidates).requires_grad_()
            bias = m.By.detach().index_select(0, candidates).requires_grad_()
            h = hidden.detach().requires_grad_()
            loss = self._ref(h, w, bias, candidates, log_q=log_q, valid=valid, **self._ref_opts)
            grad_hidden, grad_w, grad_b = torch.autograd.grad(loss, [h, w, bias])
        return loss.detach(), grad_hidden, candidates, grad_w, grad_b


def _dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """The mask `model.dropout` would draw (same RNG use): (u >= p) / (1 - p)."""
    return torch.rand_like(like).ge_(p).mul_(1.0 / (1.0 - p))


def _gru_kernels_forward(model: GRU4Rec, x, reset, hidden):
    """Training forward through the GRU layers with the compiled ops called directly (no autograd).

    Returns (top [B,H], new hidden [L,B,H], saved) where `saved` is what `_gru_kernels_backward`
    needs. Dropout as in `GRU4Rec.hidden_forward` (same masks for the same RNG state).
    """
    mask_e = None
    if model.dropout_p_embed > 0 and x.is_floating_point():
        mask_e = _dropout_mask(x, model.dropout_p_embed)
        x = x * mask_e
    reset1 = reset.unsqueeze(0)
    layers, outs = [], []
    fwd = torch.ops.gru4rec.session_gru_forward.default
    with torch._C._AutoDispatchBelowAutograd():
        for i in range(len(model.layers)):
            w = (model.gru_weight("weight_ih", i).detach(), model.gru_weight("weight_hh", i).detach(),
                 model.gru_weight("bias_ih", i).detach(), model.gru_weight("bias_hh", i).detach())
            inp = x.unsqueeze(0)
            out, _, workspace = fwd(inp, reset1, hidden[i], *w, model._variant_codes[i])
            y = out[0]
            mask = None
            if model.dropout_p_hidden > 0:
                mask = _dropout_mask(y, model.dropout_p_hidden)
                y = y * mask
            layers.append((inp, hidden[i], w, out, workspace, mask))
            outs.append(y)
            x = y
    return x, torch.stack(outs), (reset1, mask_e, layers)


_ZEROS: dict = {}


def _zeros_like_cached(t: torch.Tensor) -> torch.Tensor:
    """A zero tensor shaped like `t`, made once per shape, dtype and device (never written to)."""
    key = (tuple(t.shape), t.dtype, t.device)
    z = _ZEROS.get(key)
    if z is None:
        z = _ZEROS[key] = torch.zeros_like(t)
    return z


def _gru_kernels_backward(model: GRU4Rec, saved, grad_top):
    """Backward of `_gru_kernels_forward`: (grad of the layer-0 input rows or None, [grads per layer])."""
    reset1, mask_e, layers = saved
    bwd = torch.ops.gru4rec.session_gru_backward.default
    grads = [None] * len(layers)
    g = grad_top
    with torch._C._AutoDispatchBelowAutograd():
        for i in range(len(layers) - 1, -1, -1):
            inp, h0, w, out, workspace, mask = layers[i]
            if mask is not None:
                g = g * mask
            g_in, _, g_wih, g_whh, g_bih, g_bhh = bwd(g.unsqueeze(0).contiguous(), _zeros_like_cached(h0), inp, reset1,
                                                      h0, *w, out, workspace, model._variant_codes[i],
                                                      i > 0 or inp.is_floating_point(), False)
            grads[i] = (g_wih, g_whh, g_bih, g_bhh)
            g = g_in[0] if g_in.numel() else None
    if g is not None and mask_e is not None:
        g = g * mask_e
    return g, grads


def _first_occurrence(ids: torch.Tensor, n: int) -> torch.Tensor:
    """bool [M]: True at the first position of each distinct id >= 0 of ids [M] (ids in [-1, n));
    fixed shapes, no host sync."""
    pos = torch.arange(ids.numel(), device=ids.device)
    slot = torch.where(ids >= 0, ids, n)
    first = torch.full((n + 1,), ids.numel(), dtype=torch.int64, device=ids.device)
    first.scatter_reduce_(0, slot, pos, "amin")
    return (first.index_select(0, slot) == pos) & (ids >= 0)


def compute_step(model: GRU4Rec, output_loss: OutputLoss, inputs, targets, reset, valid, samples, hidden,
                 log_q=None):
    """Forward and backward of one training step; updates nothing.

    backend "kernels": the compiled GRU and loss ops called directly, no autograd; "reference":
    autograd through the pure-PyTorch GRU. Returns (loss [], new hidden [L,B,H] detached, dense
    grads {name: grad} of the GRU weights, sparse {name: (indices, rows)} of the item tables). For
    one-hot input, layer 0's weight_ih [3H,N] is in sparse, not dense: "weight_ih_l0": (item ids
    [B], rows [B,3H]), the gradients of its columns (AdagradM's `sparse_columns`). Every shape is
    fixed: at the epoch's tail (`valid` given) the indices of the rows that must not update are
    -1, which the sparse update skips (no boolean indexing, no host sync).
    """
    x = model.input_rows(inputs)
    leaf = x.is_floating_point()
    gru_params = model.gru_parameters()
    if model.backend == "kernels":
        top, new_hidden, saved = _gru_kernels_forward(model, x, reset, hidden)
        loss, grad_hidden, candidates, grad_w, grad_b = output_loss(top, targets, samples, valid, log_q)
        grad_x, layer_grads = _gru_kernels_backward(model, saved, grad_hidden)
        dense = dict(zip(gru_params, (g for layer in layer_grads for g in layer)))
    else:
        if leaf:
            x.requires_grad_()
        with torch.enable_grad():
            top, new_hidden = model.hidden_forward(x, reset, hidden, training=True)
        loss, grad_hidden, candidates, grad_w, grad_b = output_loss(top.detach(), targets, samples, valid, log_q)
        wrt = ([x] if leaf else []) + list(gru_params.values())
        grads = torch.autograd.grad(top, wrt, grad_hidden)
        dense = dict(zip(gru_params, grads[1:] if leaf else grads))
        grad_x = grads[0] if leaf else None
    if valid is not None:  # epoch tail: rows without a session take no part in the updates either
        keep = torch.isin(candidates, torch.cat([torch.where(valid, targets, -1), samples]))
        candidates = torch.where(keep, candidates, -1)  # -1: skipped by the sparse update
        inputs = torch.where(valid, inputs, -1)
    sparse = {"By": (candidates, grad_b)}
    if model.input_mode == "shared":  # one update so a row touched twice is updated once
        sparse["Wy"] = (torch.cat([candidates, inputs]), torch.cat([grad_w, grad_x]))
    else:
        sparse["Wy"] = (candidates, grad_w)
        if model.input_mode == "embedding":
            sparse["E"] = (inputs, grad_x)
    if model.input_mode == "onehot":  # layer 0's weight_ih: the columns of the input items
        g_wih = dense.pop("weight_ih_l0")
        if model.backend == "kernels":  # row-sparse already: row b belongs to column inputs[b]
            sparse["weight_ih_l0"] = (inputs, g_wih)
        else:  # autograd's dense [3H, N] gradient: each distinct item's column, once
            sparse["weight_ih_l0"] = (torch.where(_first_occurrence(inputs, model.n_items), inputs, -1),
                                      g_wih.t().index_select(0, inputs.clamp_min(0)))
    return loss, new_hidden.detach(), dense, sparse


class TrainStep:
    """The training step the epoch loop calls: `step(inputs, targets, reset, valid, hidden)` ->
    (loss [], new hidden [L,B,H]), updating the model and the optimizer state in place.

    inputs, targets int64 [B], reset bool [B], valid bool [B] or None (None: every row is valid).
    Each call takes `n_sample` samples from `sampler` (on the CPU a view of its cache, elsewhere a
    static buffer read through its device-side offset: graph-safe) and runs `run`. `fused`: one
    `gru4rec::train_step_` call (CPU kernels); else `compute_step` then the optimizer's updates
    (the same weights). The sampler's log q tables are converted to the model's dtype once, here.
    """

    def __init__(self, model: GRU4Rec, optimizer, sampler, output_loss: OutputLoss, *, n_sample: int, logq: float,
                 learning_rate: float, momentum: float, fused: bool):
        self.model, self.optimizer, self.sampler, self.output_loss = model, optimizer, sampler, output_loss
        self.n_sample = int(n_sample)
        self.lr, self.momentum = float(learning_rate), float(momentum)
        self.fused = bool(fused)
        dtype = model.Wy.dtype
        self.log_q_tables = tuple(t.to(dtype) for t in sampler.log_q_tables()) if logq > 0 else (None, None)
        self._fused_args = self._fused_step_args() if self.fused else None
        # On the CPU a view of the sampler's cache (no gather, no offset update); elsewhere its
        # static buffer at the device-side offset.
        self._take = sampler.take_view if sampler.device.type == "cpu" else sampler.take

    def __call__(self, inputs, targets, reset, valid, hidden):
        self.sampler.reserve(self.n_sample)  # host: refill the sampler's cache in place when due
        return self.run(inputs, targets, reset, valid, self._take(self.n_sample), hidden)

    def run(self, inputs, targets, reset, valid, samples, hidden):
        """The step with the given samples int64 [K]: (loss [], new hidden [L,B,H])."""
        if self._fused_args is not None:  # the whole step in one compiled call (same sequence as below)
            return _TRAIN_STEP(inputs, targets, reset, valid, samples, *self.log_q_tables, hidden, *self._fused_args)
        log_count, log_weight = self.log_q_tables  # log q of the candidates (SPEC section 4)
        log_q = None if log_count is None else torch.cat([log_count.index_select(0, targets),
                                                          log_weight.index_select(0, samples)])
        loss, hidden, dense, sparse = compute_step(self.model, self.output_loss, inputs, targets, reset, valid,
                                                   samples, hidden, log_q)
        self.optimizer.step_dense(list(dense.values()))
        for name, (idx, rows) in sparse.items():
            self.optimizer.step_sparse(name, idx, rows)
        return loss, hidden

    def _fused_step_args(self) -> tuple:
        """The arguments of `gru4rec::train_step_` after `hidden` (the same from step to step)."""
        return fused_step_args(self.model, self.optimizer, self.output_loss, self.lr, self.momentum)


class StaticStep:
    """The graph-safe training step (CUDA; on the CPU too, for the tests): `advance()` runs one step
    of the bound epoch and adds its loss to `window` (a device tensor the loop reads every
    LOG_EVERY steps).

    `start_epoch(schedule, hidden)` copies the epoch schedule [S,B] into static device buffers
    (reallocated, and the graph recaptured, only when an epoch has more steps than any before),
    sets the step counter to 0 and the hidden state to `hidden`. `body()` is the step itself, only
    device work on static tensors: `gru4rec::step_inputs_` (schedule row at the device-side step
    counter, samples at the sampler's device-side offset, log q of the candidates; both counters
    advance; it also writes the rows the sparse updates touch, -1 for the tail's dropped rows),
    `gru4rec::train_step_` with dedup=False and the valid mask always given (no full-versus-tail
    decision on the host), the new hidden state copied into `hidden`, the loss
    added to `window`. `advance()` = the host's `sampler.reserve(K)` (refills the cache in place
    when due), then the runner: `body()` eagerly, or its CUDA graph (`train_graph.GraphRunner`).

    ops: the op namespace (`torch.ops.gru4rec`; the tests pass `torch.ops.gru4rec_emu` to run the
    emulated CUDA kernels). backend: `train_graph.CudaGraphBackend` on CUDA, `EagerStandIn` in
    tests; graph: capture the step (else eager always).
    """

    reads_schedule = True  # run_epoch binds the schedule and calls advance()

    def __init__(self, model: GRU4Rec, optimizer, sampler, output_loss: OutputLoss, *, batch_size: int,
                 n_sample: int, logq: float, learning_rate: float, momentum: float, ops=None, backend=None,
                 graph: bool = False):
        from .train_graph import CudaGraphBackend, EagerStandIn, GraphRunner
        self.model, self.optimizer, self.sampler = model, optimizer, sampler
        self.ops = ops if ops is not None else torch.ops.gru4rec
        device = model.Wy.device
        B, K = int(batch_size), int(n_sample)
        self.batch_size, self.n_sample = B, K
        i64 = dict(dtype=torch.int64, device=device)
        self.counter = torch.zeros((), **i64)  # the device-side step counter (schedule row)
        self.inputs = torch.zeros(B, **i64)
        self.candidates = torch.zeros(B + K, **i64)  # targets, then samples (views below)
        self.targets, self.samples = self.candidates[:B], self.candidates[B:]
        self.update_ids = torch.zeros(2 * B + K, **i64)  # the rows the sparse updates touch (step_inputs_)
        self.reset = torch.zeros(B, dtype=torch.bool, device=device)
        self.valid = torch.ones(B, dtype=torch.bool, device=device)
        dtype = model.Wy.dtype
        self.log_tables = tuple(t.to(dtype) for t in sampler.log_q_tables()) if logq > 0 else (None, None)
        self.log_q = torch.zeros(B + K if logq > 0 else 0, dtype=dtype, device=device)
        self.hidden = model.init_hidden(B, device)
        self.window = torch.zeros((), device=device)  # the loss sum since the loop's last read
        self.schedule = None  # static [capacity, B] buffers: inputs, targets, reset, valid
        self.args = fused_step_args(model, optimizer, output_loss, learning_rate, momentum)
        if backend is None:
            backend = CudaGraphBackend(device) if device.type == "cuda" else EagerStandIn()
        self.runner = GraphRunner(self.body, self.state(), backend, enabled=graph)

    def state(self) -> list:
        """[(name, tensor)]: every tensor a step writes that outlives it (the graph check compares them)."""
        m, opt = self.model, self.optimizer
        params = {"Wy": m.Wy, "By": m.By, **({"E": m.E} if m.E is not None else {}), **m.gru_parameters()}
        out = [(n, p.detach()) for n, p in params.items()]
        out += [(f"acc[{n}]", t) for n, t in opt.acc.items()] + [(f"mom[{n}]", t) for n, t in opt.mom.items()]
        return out + [("hidden", self.hidden), ("loss", self.window), ("step counter", self.counter),
                      ("sampler offset", self.sampler._offset)]

    def start_epoch(self, schedule, hidden: torch.Tensor) -> None:
        """Bind an epoch schedule (EpochSchedule, any device) and its initial hidden state [L,B,H]."""
        S, B = schedule.n_steps, schedule.batch_size
        if B != self.batch_size:
            raise ValueError(f"the schedule has batch size {B}, the step {self.batch_size}")
        fields = (schedule.inputs, schedule.targets, schedule.reset, schedule.valid)
        if self.schedule is None or self.schedule[0].shape[0] < S:
            self.schedule = tuple(torch.empty((max(S, 1),) + tuple(f.shape[1:]), dtype=f.dtype,
                                              device=self.counter.device) for f in fields)
            self.runner.recapture()
        for buf, f in zip(self.schedule, fields):
            buf[:S].copy_(f)
        self.counter.zero_()
        self.hidden.copy_(hidden)
        self.window.zero_()

    def body(self) -> None:
        """One step on the static tensors (device work only: what the CUDA graph captures)."""
        lc, lw = self.log_tables
        self.ops.step_inputs_(self.counter, self.sampler._offset, *self.schedule, self.sampler._cache, lc, lw,
                              self.inputs, self.candidates, self.reset, self.valid, self.log_q, self.update_ids)
        loss, hidden = self.ops.train_step_(self.inputs, self.targets, self.reset, self.valid, self.samples, None,
                                            None, self.hidden, *self.args, dedup=False,
                                            log_q=self.log_q if lc is not None else None,
                                            update_ids=self.update_ids)
        self.hidden.copy_(hidden)
        self.window.add_(loss)

    def advance(self) -> None:
        """One training step of the bound epoch."""
        self.sampler.reserve(self.n_sample)  # host: refill the sampler's cache in place when due
        self.sampler.sync_offset(self.n_sample)  # (only if an eager CPU step took views before)
        self.runner()
