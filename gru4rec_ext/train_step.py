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
"""
from __future__ import annotations

import torch

from .model import GRU4Rec
from .ops.train_step import train_step_ as _TRAIN_STEP  # one compiled call per step

_INPUT_MODES = {"shared": 0, "embedding": 1, "onehot": 2}  # gru4rec::train_step_'s input_mode


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
    Each call takes `n_sample` samples from `sampler` (a static buffer read through its
    device-side offset: graph-safe) and runs `run`. `fused`: one `gru4rec::train_step_` call (CPU
    kernels); else `compute_step` then the optimizer's updates (the same weights). The sampler's
    log q tables are converted to the model's dtype once, here.
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

    def __call__(self, inputs, targets, reset, valid, hidden):
        self.sampler.reserve(self.n_sample)  # host: refill the sampler's cache in place when due
        samples = self.sampler.take(self.n_sample)  # device: static buffer at the device-side offset
        return self.run(inputs, targets, reset, valid, samples, hidden)

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
        m, opt = self.model, self.optimizer
        names = ["Wy", "By"] + (["E"] if m.E is not None else [])
        gru_names = list(m.gru_parameters())
        params = {**m.gru_parameters(), "Wy": m.Wy, "By": m.By, "E": m.E}
        mom = (lambda n: [opt.mom[x] for x in n]) if self.momentum > 0 else (lambda n: [])
        return ([params[n].detach() for n in names], [opt.acc[n] for n in names], mom(names),
                [params[n].detach() for n in gru_names], [opt.acc[n] for n in gru_names], mom(gru_names),
                list(m._variant_codes), _INPUT_MODES[m.input_mode], m.dropout_p_embed, m.dropout_p_hidden,
                *self.output_loss.codes(), self.lr, self.momentum, opt.eps)
