"""The GRU4Rec training loop (SPEC sections 2, 4, 5 and 8).

One step: gather the input rows, run the GRU layers (autograd for the GRU part only), compute the
sampled loss of the output layer and its row-sparse gradient (`sampled_loss_forward` /
`sampled_loss_backward`), backpropagate `grad_hidden` into the GRU weights and the gathered input
rows, then update the touched item rows (one sparse update, duplicates summed) and the GRU weights
(dense). On the CPU with the compiled kernels that whole sequence is one call of
`gru4rec::train_step_` (csrc/train_step.cpp), which runs the same ops in the same order. The hot
loop keeps SPEC section 8's rules: the epoch schedule lives on the device, shapes are fixed (valid
mask at the tail), samples come from a device-side cache, the loss is accumulated on the device
and read only every `LOG_EVERY` steps.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time

import torch

from . import _extension
from .model import GRU4Rec
from .optim import AdagradM
from .sampling import PopularitySampler
from .threads import cpu_training_threads

logger = logging.getLogger("gru4rec_ext")

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")
_INPUT_MODES = {"shared": 0, "embedding": 1, "onehot": 2}  # gru4rec::train_step_'s input_mode


from .ops.train_step import train_step_ as _TRAIN_STEP  # noqa: E402  (one compiled call per step)
LOG_EVERY = 100
CHECKPOINT_NAME = "last.pt"


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


def compute_step(model: GRU4Rec, output_loss: OutputLoss, inputs, targets, reset, valid, samples, hidden,
                 log_q=None):
    """Forward and backward of one training step; updates nothing.

    backend "kernels": the compiled GRU and loss ops called directly, no autograd; "reference":
    autograd through the pure-PyTorch GRU. Returns (loss [], new hidden [L,B,H] detached, dense
    grads {name: grad} of the GRU weights, sparse {name: (indices, rows)} of the item tables).
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
        keep = torch.isin(candidates, torch.cat([targets[valid], samples]))
        candidates, grad_w, grad_b = candidates[keep], grad_w[keep], grad_b[keep]
        if grad_x is not None:
            inputs, grad_x = inputs[valid], grad_x[valid]
    sparse = {"By": (candidates, grad_b)}
    if model.input_mode == "shared":  # one update so a row touched twice is updated once
        sparse["Wy"] = (torch.cat([candidates, inputs]), torch.cat([grad_w, grad_x]))
    else:
        sparse["Wy"] = (candidates, grad_w)
        if model.input_mode == "embedding":
            sparse["E"] = (inputs, grad_x)
    return loss, new_hidden.detach(), dense, sparse


class Trainer:
    """Trains a GRU4Rec model on SessionData (see `train` for the arguments).

    Construction seeds torch's global RNG with `seed` (dropout masks draw from it), moves the
    model to `device`, and builds the sampler (its own generator, seeded with `seed`) and the
    optimizer; `fit()` runs the epochs. On the CPU the same seed gives identical weights.
    `fused_step` (True on the CPU when the kernels are built) runs each step as one
    `gru4rec::train_step_` call; False runs the same sequence of ops from Python (same weights).
    At an epoch's tail the batch keeps B rows with a valid mask instead of shrinking (the authors
    shrink it); the empty rows take no part in the loss, as negatives, or in the updates.
    """

    def __init__(self, model: GRU4Rec, train_data, *, n_epochs: int = 10, batch_size: int = 32,
                 n_sample: int = 2048, sample_alpha: float = 0.5, loss: str = "cross-entropy", bpreg: float = 0.0,
                 logq: float = 0.0, elu_param: float | None = None, learning_rate: float = 0.05,
                 momentum: float = 0.0, mask_accidental_hits: bool = False, shuffle: bool = False, seed: int = 0,
                 device=None, progress: bool = True, eval_data=None, checkpoint_dir=None, resume: bool = False,
                 log_json=None, item_map=None, config: dict | None = None, eval_batch_size: int = 512,
                 cutoffs=(1, 5, 10, 20), tie_modes=("standard",)):
        if not isinstance(model, GRU4Rec):
            raise TypeError(f"model must be a GRU4Rec, got {type(model).__name__}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        for name, v in (("n_epochs", n_epochs), ("batch_size", batch_size)):
            if int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        if int(n_sample) < 0:
            raise ValueError(f"n_sample must be >= 0, got {n_sample}")
        if logq > 0 and loss != "cross-entropy":
            raise ValueError(f"logq > 0 is only defined for loss='cross-entropy', got loss={loss!r}")
        if elu_param is not None:
            expect = ("linear", 1.0) if float(elu_param) == 0 else ("elu", float(elu_param))
            if (model.activation, model.elu_alpha if model.activation == "elu" else 1.0) != expect:
                raise ValueError(f"elu_param={elu_param} disagrees with the model's final_activation "
                                 f"{model.final_activation!r}")
        if resume and checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        self.model = model
        self.data = train_data
        self.n_epochs, self.batch_size, self.n_sample = int(n_epochs), int(batch_size), int(n_sample)
        self.sample_alpha, self.loss, self.bpreg, self.logq = float(sample_alpha), loss, float(bpreg), float(logq)
        self.learning_rate, self.momentum = float(learning_rate), float(momentum)
        self.mask_accidental_hits, self.shuffle, self.seed = bool(mask_accidental_hits), bool(shuffle), int(seed)
        self.device = torch.device(device) if device is not None else model.Wy.device
        self.progress, self.eval_data, self.log_json = progress, eval_data, log_json
        self.checkpoint_dir, self.resume = checkpoint_dir, bool(resume)
        self.item_map = item_map if item_map is not None else model.item_map
        self.config = dict(config or {})
        self.eval_batch_size, self.cutoffs, self.tie_modes = int(eval_batch_size), tuple(cutoffs), tuple(tie_modes)
        self.history: list[dict] = []
        self.start_epoch = 0

        torch.manual_seed(self.seed)
        self.model.to(self.device)
        self._check_kernels()
        self.model.item_map = self.item_map
        counts = torch.as_tensor(train_data.item_counts())
        if counts.numel() != model.n_items:
            raise ValueError(f"train_data has {counts.numel()} items, the model {model.n_items}")
        self.sampler = PopularitySampler(counts, self.sample_alpha, self.device,
                                         block_size=max(self.n_sample, 1) * 256, seed=self.seed)
        sparse = {"Wy": model.Wy, "By": model.By}
        if model.E is not None:
            sparse["E"] = model.E
        self.optimizer = AdagradM(model.gru_parameters(), sparse, self.learning_rate, self.momentum,
                                  sparse_kernel=None if model.backend == "kernels" else False)
        self.output_loss = OutputLoss(model, loss=loss, bpreg=bpreg, logq=logq,
                                      mask_accidental_hits=mask_accidental_hits)
        # CPU with the kernels: each step is one call of gru4rec::train_step_ (fused_step=False: the
        # Python sequence of ops, which computes the same).
        self.fused_step = (model.backend == "kernels" and self.device.type == "cpu"
                           and _extension.has_kernel("train_step_", "CPU"))
        if self.resume:
            self._resume()

    def _fused_step_args(self) -> tuple:
        """The arguments of `gru4rec::train_step_` that stay the same from step to step."""
        m, opt, sampler = self.model, self.optimizer, self.sampler
        names = ["Wy", "By"] + (["E"] if m.E is not None else [])
        gru_names = list(m.gru_parameters())
        params = {**m.gru_parameters(), "Wy": m.Wy, "By": m.By, "E": m.E}
        mom = (lambda n: [opt.mom[x] for x in n]) if self.momentum > 0 else (lambda n: [])
        log_q_tables = tuple(t.to(m.Wy.dtype) for t in sampler.log_q_tables()) if self.logq > 0 else (None, None)
        return (*log_q_tables,
                [params[n].detach() for n in names], [opt.acc[n] for n in names], mom(names),
                [params[n].detach() for n in gru_names], [opt.acc[n] for n in gru_names], mom(gru_names),
                list(m._variant_codes), _INPUT_MODES[m.input_mode], m.dropout_p_embed, m.dropout_p_hidden,
                *self.output_loss.codes(), self.learning_rate, self.momentum, opt.eps)

    def _check_kernels(self) -> None:
        """backend "kernels" calls the compiled ops directly: they must exist for the device."""
        if self.model.backend != "kernels":
            return
        key = "CUDA" if self.device.type == "cuda" else "CPU"
        missing = [op for op in ("session_gru_forward", "session_gru_backward", "sampled_loss_forward",
                                 "sampled_loss_backward") if not _extension.has_kernel(op, key)]
        if not missing:
            return
        if self.model.backend_request == "auto":
            logger.warning("gru4rec_ext: no %s kernel for %s: training with backend='reference'", key, missing)
            self.model.set_backend("reference")
        else:
            raise RuntimeError(f"backend='kernels' but the extension has no {key} kernel for {missing}; "
                               "rebuild it for this device or use backend='reference'")

    def training_config(self) -> dict:
        return {"n_epochs": self.n_epochs, "batch_size": self.batch_size, "n_sample": self.n_sample,
                "sample_alpha": self.sample_alpha, "loss": self.loss, "bpreg": self.bpreg, "logq": self.logq,
                "learning_rate": self.learning_rate, "momentum": self.momentum,
                "mask_accidental_hits": self.mask_accidental_hits, "shuffle": self.shuffle, "seed": self.seed}

    # ----- checkpoints ------------------------------------------------------------------------
    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "sampler": self.sampler.state_dict()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _save(self, epoch: int) -> None:
        from .checkpoint import save_checkpoint
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        config = {**self.config, **self.training_config()}
        save_checkpoint(os.path.join(self.checkpoint_dir, CHECKPOINT_NAME), self.model, self.optimizer, config,
                        self.item_map, epoch, {"rng": self._rng_state(), "history": self.history})

    def _resume(self) -> None:
        from .checkpoint import read_checkpoint
        path = os.path.join(self.checkpoint_dir, CHECKPOINT_NAME)
        if not os.path.exists(path):
            logger.info("no checkpoint at %s: starting from epoch 1", path)
            return
        ckpt = read_checkpoint(path)
        if ckpt["model_config"]["n_items"] != self.model.n_items:
            raise ValueError(f"checkpoint {path} has {ckpt['model_config']['n_items']} items, the model "
                             f"{self.model.n_items}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        rng = ckpt["extra"]["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.sampler.load_state_dict(rng["sampler"])
        self.history = list(ckpt["extra"].get("history", []))
        self.start_epoch = int(ckpt["epoch"])
        logger.info("resumed from %s after epoch %d", path, self.start_epoch)

    # ----- the loop ---------------------------------------------------------------------------
    def _schedule(self, epoch: int):
        from .batching import build_schedule
        sched = build_schedule(self.data, self.batch_size, shuffle=self.shuffle, seed=self.seed + epoch)
        full = sched.valid.all(dim=1).tolist()  # host side, once per epoch: steps with no masked row
        return sched.to(self.device), full

    def run_epoch(self, epoch: int, max_steps: int | None = None) -> dict:
        """Train one epoch (0-based `epoch`), or its first `max_steps` steps (benchmarks).

        Returns {"epoch", "loss", "events_per_s", "seconds", "steps", "events"}; events are the
        valid training pairs of the steps run, loss the mean batch loss. On the CPU with the kernels
        the step's work runs on the kernels' own threads (gru4rec_ext.threads).
        """
        if self.device.type == "cpu" and self.model.backend == "kernels":
            with cpu_training_threads():
                return self._run_epoch(epoch, max_steps)
        return self._run_epoch(epoch, max_steps)

    def _run_epoch(self, epoch: int, max_steps: int | None) -> dict:
        from tqdm.auto import tqdm
        model, opt, sampler = self.model, self.optimizer, self.sampler
        t0 = time.perf_counter()
        sched, full = self._schedule(epoch)
        n_steps = sched.inputs.shape[0] if max_steps is None else min(int(max_steps), sched.inputs.shape[0])
        n_events = sched.n_pairs if n_steps == sched.inputs.shape[0] else int(sum(
            self.batch_size if full[s] else int(sched.valid[s].sum()) for s in range(n_steps)))
        hidden = model.init_hidden(self.batch_size, self.device)
        loss_sum = torch.zeros((), device=self.device)
        window = torch.zeros((), device=self.device)
        use_logq = self.logq > 0
        dtype = model.Wy.dtype  # the sampler's log q tables are float32
        k = self.n_sample
        inputs_all, targets_all, reset_all, valid_all = sched.inputs, sched.targets, sched.reset, sched.valid
        bar = tqdm(total=n_steps, disable=not self.progress, desc=f"epoch {epoch + 1}/{self.n_epochs}",
                   unit="step", leave=False)
        last_t, last_s = t0, 0
        fused = self._fused_step_args() if self.fused_step else None
        for s in range(n_steps):
            inputs, targets = inputs_all[s], targets_all[s]
            samples = sampler.draw(k)
            if fused is not None:  # the whole step in one compiled call (same sequence as below)
                loss, hidden = _TRAIN_STEP(inputs, targets, reset_all[s], None if full[s] else valid_all[s], samples,
                                           *fused[:2], hidden, *fused[2:])
            else:
                log_q = sampler.log_q(targets, samples).to(dtype) if use_logq else None
                loss, hidden, dense, sparse = compute_step(model, self.output_loss, inputs, targets, reset_all[s],
                                                           None if full[s] else valid_all[s], samples, hidden, log_q)
                opt.step_dense(list(dense.values()))
                for name, (idx, rows) in sparse.items():
                    opt.step_sparse(name, idx, rows)
            window += loss
            if (s + 1) % LOG_EVERY == 0 or s + 1 == n_steps:
                w = float(window)  # the one host read, every LOG_EVERY steps
                loss_sum += window
                window.zero_()
                now = time.perf_counter()
                rate = (s + 1 - last_s) * self.batch_size / max(now - last_t, 1e-9)
                bar.set_postfix(loss=f"{w / (s + 1 - last_s):.4f}", ev_s=f"{rate:,.0f}")
                bar.update(s + 1 - last_s)
                last_t, last_s = now, s + 1
                if not math.isfinite(w):
                    bar.close()
                    raise FloatingPointError(f"training loss became {w} in epoch {epoch + 1} at step {s + 1}")
        bar.close()
        seconds = time.perf_counter() - t0
        result = {"epoch": epoch + 1, "loss": float(loss_sum) / max(n_steps, 1),
                  "events_per_s": n_events / max(seconds, 1e-9), "seconds": seconds, "steps": n_steps,
                  "events": n_events}
        logger.info("epoch %d/%d: loss %.4f, %.0f events/s, %.1f s", epoch + 1, self.n_epochs, result["loss"],
                    result["events_per_s"], seconds)
        return result

    def fit(self) -> dict:
        """Train the remaining epochs (checkpointing each), evaluate on eval_data; returns the summary."""
        self.model.train()
        summary = {"config": {**self.config, **self.training_config()}, "epochs": self.history}
        for epoch in range(self.start_epoch, self.n_epochs):
            self.history.append(self.run_epoch(epoch))
            if self.checkpoint_dir is not None:
                self._save(epoch + 1)
            if self.log_json is not None:  # per-epoch progress survives an interrupted run
                self._write_json(summary)
        self.model.eval()
        if self.eval_data is not None:
            from .evaluate import evaluate
            t0 = time.perf_counter()
            metrics = evaluate(self.model, self.eval_data, batch_size=self.eval_batch_size, cutoffs=self.cutoffs,
                               tie_modes=self.tie_modes, device=self.device, progress=self.progress)
            summary["eval_seconds"] = time.perf_counter() - t0
            summary["metrics"] = metrics
            # One line here; the table is `format_metrics(summary["metrics"])` (the CLI prints it).
            logger.info("evaluation (%d cases, %.1f s): %s", metrics.get("n_cases", -1), summary["eval_seconds"],
                        _headline(metrics))
        if self.log_json is not None:
            self._write_json(summary)
        return summary

    def _write_json(self, summary: dict) -> None:
        folder = os.path.dirname(os.path.abspath(self.log_json))
        os.makedirs(folder, exist_ok=True)
        tmp = self.log_json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=2, default=float)
        os.replace(tmp, self.log_json)


def train(model: GRU4Rec, train_data, *, n_epochs: int = 10, batch_size: int = 32, n_sample: int = 2048,
          sample_alpha: float = 0.5, loss: str = "cross-entropy", bpreg: float = 0.0, logq: float = 0.0,
          elu_param: float | None = None, learning_rate: float = 0.05, momentum: float = 0.0,
          mask_accidental_hits: bool = False, shuffle: bool = False, seed: int = 0, device=None,
          progress: bool = True, eval_data=None, checkpoint_dir=None, resume: bool = False, log_json=None,
          **kwargs) -> dict:
    """Train `model` on `train_data` (SessionData) with Adagrad-momentum and a sampled ranking loss.

    loss: "cross-entropy" | "bpr-max" | "top1-max" | "bpr" | "top1"; bpreg: the BPR-max score
    regulariser; logq: popularity correction weight (cross-entropy); n_sample: K extra samples per
    step drawn ∝ count^sample_alpha; elu_param: optional check of the model's final activation (0:
    linear, a > 0: elu-a). checkpoint_dir: a checkpoint `last.pt` written after every epoch; resume:
    continue from it. eval_data: SessionData evaluated at the end. log_json: per-epoch loss,
    events/s, seconds and final metrics as JSON. Extra keyword arguments go to `Trainer`.

    Returns {"config", "epochs": [...], "metrics" (with eval_data), "eval_seconds"}.
    """
    return Trainer(model, train_data, n_epochs=n_epochs, batch_size=batch_size, n_sample=n_sample,
                   sample_alpha=sample_alpha, loss=loss, bpreg=bpreg, logq=logq, elu_param=elu_param,
                   learning_rate=learning_rate, momentum=momentum, mask_accidental_hits=mask_accidental_hits,
                   shuffle=shuffle, seed=seed, device=device, progress=progress, eval_data=eval_data,
                   checkpoint_dir=checkpoint_dir, resume=resume, log_json=log_json, **kwargs).fit()


def _headline(metrics: dict) -> str:
    """Recall and MRR at the largest cutoff for each tie mode, on one line."""
    parts = []
    for mode, values in metrics.items():
        if isinstance(values, dict) and values:
            cut = max(int(k.split("@")[1]) for k in values if "@" in k)
            parts.append(f"{mode}: recall@{cut} {values.get(f'recall@{cut}', float('nan')):.4f}, "
                         f"mrr@{cut} {values.get(f'mrr@{cut}', float('nan')):.4f}")
    return "; ".join(parts)
