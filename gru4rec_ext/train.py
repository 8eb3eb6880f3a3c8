"""The GRU4Rec trainer (SPEC sections 2, 4, 5 and 8): `train()` and `Trainer`.

The training code lives in three rooms, which `Trainer` puts together:

* `train_step.py`: one step (`compute_step`; `TrainStep`: the fused `gru4rec::train_step_` call on
  the CPU, else the Python sequence of ops; `StaticStep`: the CUDA step on static buffers, run
  eagerly or as a CUDA graph by `train_graph.GraphRunner`);
* `train_loop.py`: the epoch loop over a session-parallel schedule, with progress and logging;
* `train_state.py`: the checkpoint after every epoch and the resume from it.

This module holds the configuration (argument checks, the model on its device, the sampler, the
optimizer) and `fit()`: the epochs, checkpoints and the final evaluation.
"""
from __future__ import annotations

import contextlib
import logging
import time

import torch

from . import _extension
from .model import GRU4Rec
from .optim import AdagradM
from .sampling import PopularitySampler
from .train_loop import LOG_EVERY, headline, run_epoch, write_json
from .train_state import CHECKPOINT_NAME, resume_training, save_training_checkpoint
from .threads import StepThreads, cpu_training_threads, threads_are_explicit, training_threads
from .train_step import OutputLoss, StaticStep, TrainStep, compute_step

logger = logging.getLogger("gru4rec_ext")

LOSSES = ("cross-entropy", "bpr-max", "top1-max", "bpr", "top1")

__all__ = ["Trainer", "train", "LOSSES", "OutputLoss", "compute_step", "LOG_EVERY", "CHECKPOINT_NAME"]


class Trainer:
    """Trains a GRU4Rec model on SessionData (see `train` for the arguments).

    Construction seeds torch's global RNG with `seed` (dropout masks draw from it), moves the
    model to `device`, and builds the sampler (its own generator, seeded with `seed`) and the
    optimizer; `fit()` runs the epochs. On the CPU the same seed gives identical weights.
    `fused_step` (True on the CPU when the kernels are built) runs each step as one
    `gru4rec::train_step_` call; False runs the same sequence of ops from Python (same weights).
    On CUDA with the kernels the step is `StaticStep` (graph-safe: its inputs read on the device
    through a device-side step counter), captured once as a CUDA graph and replayed when
    `cuda_graph` (None: True on CUDA); the first replay is checked against the eager step, and a
    failed capture or a disagreement logs one warning and trains eagerly (`train_graph`).
    At an epoch's tail the batch keeps B rows with a valid mask instead of shrinking (the authors
    shrink it); the empty rows take no part in the loss, as negatives, or in the updates.
    `on_epoch_end(epoch, result)`, when given, is called in `fit()` after each epoch (1-based
    `epoch`, `result` the epoch's history entry, before its checkpoint and JSON are written, so
    entries it adds to `result` are kept); an exception it raises stops training and propagates
    out of `fit()` (`gru4rec_ext.tuning` evaluates and prunes there).
    On the CPU with the kernels and more than one thread, `adaptive_threads` (default True) runs
    each stretch of steps on whichever of the thread count and one thread was faster in a short
    probe before it (`gru4rec_ext.threads.StepThreads`; the epoch's result then has
    `steps_per_thread_count`); it is off when the count was set explicitly (the CLI's
    `--threads`, OMP_NUM_THREADS), and where torch's BLAS computes the products (Intel CPUs,
    GRU4REC_GEMM=blas), whose rounding may depend on the count: there the results must not
    depend on timing. With the package's own product the count never changes the results.
    """

    def __init__(self, model: GRU4Rec, train_data, *, n_epochs: int = 10, batch_size: int = 32,
                 n_sample: int = 2048, sample_alpha: float = 0.5, loss: str = "cross-entropy", bpreg: float = 0.0,
                 logq: float = 0.0, elu_param: float | None = None, learning_rate: float = 0.05,
                 momentum: float = 0.0, mask_accidental_hits: bool = False, shuffle: bool = False, seed: int = 0,
                 device=None, progress: bool = True, eval_data=None, checkpoint_dir=None, resume: bool = False,
                 log_json=None, item_map=None, config: dict | None = None, eval_batch_size: int = 512,
                 cutoffs=(1, 5, 10, 20), tie_modes=("standard",), on_epoch_end=None, cuda_graph: bool | None = None,
                 adaptive_threads: bool = True):
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
        self.adaptive_threads = bool(adaptive_threads)
        self._step_threads = None
        self.device = torch.device(device) if device is not None else model.Wy.device
        self.progress, self.eval_data, self.log_json = progress, eval_data, log_json
        self.checkpoint_dir, self.resume = checkpoint_dir, bool(resume)
        self.item_map = item_map if item_map is not None else model.item_map
        self.config = dict(config or {})
        self.eval_batch_size, self.cutoffs, self.tie_modes = int(eval_batch_size), tuple(cutoffs), tuple(tie_modes)
        self.history: list[dict] = []
        self.start_epoch = 0
        if on_epoch_end is not None and not callable(on_epoch_end):
            raise TypeError(f"on_epoch_end must be callable, got {type(on_epoch_end).__name__}")
        self.on_epoch_end = on_epoch_end
        if cuda_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device, got device {self.device}")

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
        dense = model.gru_parameters()
        # One-hot input: layer 0's weight_ih [3H, N] is updated on the columns of the step's items only
        # (its gradient comes row-sparse, as the item tables'; the authors update it so too).
        columns = ["weight_ih_l0"] if model.input_mode == "onehot" else []
        sparse.update({n: dense.pop(n) for n in columns})
        self.optimizer = AdagradM(dense, sparse, self.learning_rate, self.momentum,
                                  sparse_kernel=None if model.backend == "kernels" else False, sparse_columns=columns)
        self.output_loss = OutputLoss(model, loss=loss, bpreg=bpreg, logq=logq,
                                      mask_accidental_hits=mask_accidental_hits)
        # CPU with the kernels: each step is one call of gru4rec::train_step_ (fused_step=False: the
        # Python sequence of ops, which computes the same).
        self.fused_step = (model.backend == "kernels" and self.device.type == "cpu"
                           and _extension.has_kernel("train_step_", "CPU"))
        # CUDA with the kernels: the graph-safe StaticStep (one step_inputs_ and one train_step_ call
        # per step), captured as a CUDA graph unless cuda_graph=False. The tests set static_step,
        # step_ops and graph_backend to run it on the CPU (with the emulated kernels, or a stand-in
        # for the graph).
        self.static_step = (model.backend == "kernels" and self.device.type == "cuda"
                            and all(_extension.has_kernel(op, "CUDA") for op in ("train_step_", "step_inputs_")))
        self.cuda_graph = self.static_step and cuda_graph is not False
        if cuda_graph and not self.static_step:
            logger.warning("gru4rec_ext: cuda_graph=True needs backend='kernels' and the compiled CUDA kernels "
                           "(train_step_, step_inputs_); training without a CUDA graph")
        self.step_ops = None  # the op namespace of the static step (None: torch.ops.gru4rec)
        self.graph_backend = None  # None: train_graph.CudaGraphBackend on CUDA
        self._static = None  # the StaticStep, made once (its buffers and graph live across epochs)
        if self.resume:
            self._resume()

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

    # ----- checkpoints (train_state.py) --------------------------------------------------------
    def _save(self, epoch: int) -> None:
        save_training_checkpoint(self.checkpoint_dir, self.model, self.optimizer, self.sampler,
                                 config={**self.config, **self.training_config()}, item_map=self.item_map,
                                 epoch=epoch, history=self.history, device=self.device)

    def _resume(self) -> None:
        resumed = resume_training(self.checkpoint_dir, self.model, self.optimizer, self.sampler, self.device)
        if resumed is not None:
            self.start_epoch, self.history = resumed

    # ----- the loop (train_loop.py, train_step.py) ---------------------------------------------
    def make_step(self) -> TrainStep | StaticStep:
        """The training step of this configuration (StaticStep when `static_step`, made once; else a
        TrainStep, fused when `fused_step`), as `run_epoch` calls it."""
        if self.static_step:
            if self._static is None:
                self._static = StaticStep(self.model, self.optimizer, self.sampler, self.output_loss,
                                          batch_size=self.batch_size, n_sample=self.n_sample, logq=self.logq,
                                          learning_rate=self.learning_rate, momentum=self.momentum,
                                          ops=self.step_ops, backend=self.graph_backend, graph=self.cuda_graph)
            return self._static
        return TrainStep(self.model, self.optimizer, self.sampler, self.output_loss, n_sample=self.n_sample,
                         logq=self.logq, learning_rate=self.learning_rate, momentum=self.momentum,
                         fused=self.fused_step)

    def run_epoch(self, epoch: int, max_steps: int | None = None) -> dict:
        """Train one epoch (0-based `epoch`), or its first `max_steps` steps (benchmarks).

        Returns {"epoch", "loss", "events_per_s", "seconds", "steps", "events"}; events are the
        valid training pairs of the steps run, loss the mean batch loss. On the CPU with the kernels
        the steps run on the kernels' own threads, torch's ops on one (gru4rec_ext.threads).
        """
        from .batching import build_schedule
        t0 = time.perf_counter()
        # The ids are checked here, once per epoch on the host, so that no step checks (or syncs for) them.
        schedule = build_schedule(self.data, self.batch_size, shuffle=self.shuffle, seed=self.seed + epoch,
                                  n_items=self.model.n_items)
        own_threads = self.device.type == "cpu" and self.model.backend == "kernels" and _extension.available()
        threads = cpu_training_threads() if own_threads else contextlib.nullcontext()
        chooser = self._thread_chooser() if own_threads else None
        with threads:
            result = run_epoch(self.make_step(), schedule, self.model.init_hidden(self.batch_size, self.device),
                               epoch=epoch, n_epochs=self.n_epochs, max_steps=max_steps, progress=self.progress,
                               t0=t0, threads=chooser)
        if chooser is not None:  # since the start of training
            result["steps_per_thread_count"] = dict(chooser.threads_used)
        return result

    def _thread_chooser(self) -> StepThreads | None:
        """The StepThreads of this run (kept across epochs, so that its probes back off), or None
        where the count is fixed: one thread, `adaptive_threads=False`, an explicit count, or
        torch's BLAS products, whose rounding may depend on the split (the package's own product
        gives the same bits on any count, so the choice never changes the results)."""
        n = training_threads()
        if (n < 2 or not self.adaptive_threads or threads_are_explicit()
                or _extension.cpu_gemm() != "avx512"):
            return None
        if self._step_threads is None or self._step_threads.threads != n:
            self._step_threads = StepThreads(n)
        self._step_threads.resume()  # cpu_training_threads sets the pool's count on entering
        return self._step_threads

    def fit(self) -> dict:
        """Train the remaining epochs (checkpointing each), evaluate on eval_data; returns the summary."""
        self.model.train()
        summary = {"config": {**self.config, **self.training_config()}, "epochs": self.history}
        for epoch in range(self.start_epoch, self.n_epochs):
            self.history.append(self.run_epoch(epoch))
            if self.on_epoch_end is not None:  # e.g. validation for early stopping / tuning (see Trainer)
                self.on_epoch_end(epoch + 1, self.history[-1])
            if self.checkpoint_dir is not None:
                self._save(epoch + 1)
            if self.log_json is not None:  # per-epoch progress survives an interrupted run
                write_json(self.log_json, summary)
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
                        headline(metrics))
        if self.log_json is not None:
            write_json(self.log_json, summary)
        return summary


def train(model: GRU4Rec, train_data, *, n_epochs: int = 10, batch_size: int = 32, n_sample: int = 2048,
          sample_alpha: float = 0.5, loss: str = "cross-entropy", bpreg: float = 0.0, logq: float = 0.0,
          elu_param: float | None = None, learning_rate: float = 0.05, momentum: float = 0.0,
          mask_accidental_hits: bool = False, shuffle: bool = False, seed: int = 0, device=None,
          progress: bool = True, eval_data=None, checkpoint_dir=None, resume: bool = False, log_json=None,
          cuda_graph: bool | None = None, **kwargs) -> dict:
    """Train `model` on `train_data` (SessionData) with Adagrad-momentum and a sampled ranking loss.

    loss: "cross-entropy" | "bpr-max" | "top1-max" | "bpr" | "top1"; bpreg: the BPR-max score
    regulariser; logq: popularity correction weight (cross-entropy); n_sample: K extra samples per
    step drawn ∝ count^sample_alpha; elu_param: optional check of the model's final activation (0:
    linear, a > 0: elu-a). checkpoint_dir: a checkpoint `last.pt` written after every epoch; resume:
    continue from it. eval_data: SessionData evaluated at the end. log_json: per-epoch loss,
    events/s, seconds and final metrics as JSON. cuda_graph: on CUDA, capture the step as a CUDA graph
    (None: yes; checked on its first replay, eager fallback with one warning). Extra keyword
    arguments go to `Trainer`.

    Returns {"config", "epochs": [...], "metrics" (with eval_data), "eval_seconds"}.
    """
    return Trainer(model, train_data, n_epochs=n_epochs, batch_size=batch_size, n_sample=n_sample,
                   sample_alpha=sample_alpha, loss=loss, bpreg=bpreg, logq=logq, elu_param=elu_param,
                   learning_rate=learning_rate, momentum=momentum, mask_accidental_hits=mask_accidental_hits,
                   shuffle=shuffle, seed=seed, device=device, progress=progress, eval_data=eval_data,
                   checkpoint_dir=checkpoint_dir, resume=resume, log_json=log_json, cuda_graph=cuda_graph,
                   **kwargs).fit()
