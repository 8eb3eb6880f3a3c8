"""`tune(...)`: an Optuna study over GRU4Rec's hyperparameters, trials trained in-process.

Each trial samples its parameters (TPE), trains a `GRU4Rec` with the package's `Trainer`, and
after every epoch evaluates the validation data (Recall@N or MRR@N over all items, standard ties)
and reports it to the pruner, which stops hopeless trials early. A trial's value is its best
epoch's metric: since nothing in training depends on the number of epochs, epoch k of a run IS a
run with n_epochs=k, so the best configuration's `n_epochs` is that epoch (`n_epochs` of the
space / --params is the most a trial trains). The study lives in an Optuna RDB storage (SQLite
file by default), so a stopped run resumes and several processes can share one study.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import warnings

from .config import TrialConfig, config_for_file
from .space import SpaceError, load_space, parse_space
from .validation import full_training_data, load_tuning_data

logger = logging.getLogger("gru4rec_ext")

INSTALL_HINT = "gru4rec tune needs Optuna: pip install 'gru4rec-ext[tune]' (or: pip install optuna matplotlib)"
PRUNERS = ("median", "hyperband", "none")
DONE_STATES = ("COMPLETE", "PRUNED")  # what --trials counts


class TuneError(ValueError):
    """A user error of a tuning run (bad metric, storage, study, ...): one clear message."""


class _Deadline(Exception):
    """Raised at an epoch's end once the --timeout has passed: the trial ends with what it has."""


def import_optuna():
    """optuna, or an ImportError that says how to install it."""
    try:
        import optuna
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return optuna


def parse_metric(metric: str) -> tuple[str, int]:
    """"recall@20" / "mrr@10" (any case) -> ("recall@20", 20)."""
    text = str(metric).strip().lower()
    kind, _, cut = text.partition("@")
    if kind not in ("recall", "mrr") or not cut.isdigit() or int(cut) < 1:
        raise TuneError(f"metric must be recall@N or mrr@N (N >= 1), got {metric!r}")
    return f"{kind}@{int(cut)}", int(cut)


def mask_url(url: str) -> str:
    """The storage URL with its password hidden (for messages)."""
    try:
        from sqlalchemy.engine import make_url
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a parseable URL: show it as given, it holds no password we can find
        return url


_RACES = ("UNIQUE constraint failed", "already exists", "database is locked")  # workers creating one database


def open_storage(url: str, optuna, attempts: int = 5):
    """An RDBStorage with heartbeats (a killed worker's trial is failed and run again), or TuneError.
    Workers that create the same new database at once race on its tables: the loser tries again."""
    for attempt in range(attempts):
        try:
            return _open_storage(url, optuna)
        except TuneError as exc:
            if attempt + 1 == attempts or not any(r in str(exc) for r in _RACES):
                raise
            time.sleep(0.5 + attempt)
    raise AssertionError("unreachable")


def _open_storage(url: str, optuna):
    masked = mask_url(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryFailedTrialCallback(max_retry=1) \
                if not hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback") \
                else optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
            try:
                return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180,
                                                  heartbeat_stale_trial_callback=retry)
            except TypeError:  # Optuna < 4.9 names the callback failed_trial_callback
                return optuna.storages.RDBStorage(url, heartbeat_interval=60, grace_period=180,
                                                  failed_trial_callback=retry)
    except Exception as exc:  # sqlalchemy / driver errors of every kind
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        cause = exc.__cause__
        if cause is not None and str(cause).strip():
            msg += f" ({str(cause).strip().splitlines()[0]})"
        raise TuneError(f"cannot open the storage {masked!r}: {msg}") from None


def make_pruner(pruner, prune_after: int, n_epochs: int, optuna, prune_startup: int = 3):
    """A pruner object: "median" (below the median of earlier trials at the same epoch, once
    `prune_startup` trials have finished), "hyperband", "none", or an optuna pruner passed through.
    No trial is pruned before epoch `prune_after`."""
    if not isinstance(pruner, str):
        return pruner
    if pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=prune_startup, n_warmup_steps=prune_after)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(prune_after, 1), max_resource=max(n_epochs, 1),
                                              reduction_factor=3)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise TuneError(f"pruner must be one of {PRUNERS}, got {pruner!r}")


class Objective:
    """One trial: sample, train with per-epoch validation, report, prune; returns the best epoch's metric."""

    def __init__(self, setup: TrialConfig, data, metric: str, cutoff: int, *, seed: int, device, progress: bool,
                 eval_batch_size: int, deadline: float | None, optuna):
        self.setup, self.data, self.metric, self.cutoff = setup, data, metric, cutoff
        self.seed, self.device, self.progress = seed, device, progress
        self.eval_batch_size, self.deadline, self.optuna = eval_batch_size, deadline, optuna

    def __call__(self, trial) -> float:
        import torch

        from ..cli import MODEL_KEYS, TRAIN_KEYS
        from ..evaluate import evaluate
        from ..model import GRU4Rec
        from ..train import Trainer
        optuna, metric = self.optuna, self.metric
        with warnings.catch_warnings():  # an enqueued preset value off the space's step grid is used as is
            warnings.filterwarnings("ignore", message="Fixed parameter")
            sampled = {p.name: p.suggest(trial) for p in self.setup.space}
        cfg = self.setup.build(sampled)
        trial.set_user_attr("config", config_for_file(cfg))
        torch.manual_seed(self.seed)
        model = GRU4Rec(self.data.train.n_items, **{k: cfg[k] for k in MODEL_KEYS})
        model.item_map = self.data.train.item_map
        history = {f"recall@{self.cutoff}": [], f"mrr@{self.cutoff}": []}
        t0 = time.perf_counter()

        def on_epoch_end(epoch: int, result: dict) -> None:
            scores = evaluate(model, self.data.valid, batch_size=self.eval_batch_size, cutoffs=(self.cutoff,),
                              tie_modes=("standard",), device=self.device, progress=False)["standard"]
            result["valid"] = scores
            for key in history:
                history[key].append(scores[key])
            value = scores[metric]
            trial.report(value, epoch)
            trial.set_user_attr("epochs", epoch)
            trial.set_user_attr("valid", history)
            trial.set_user_attr("seconds", time.perf_counter() - t0)
            logger.info("trial %d epoch %d/%d: %s %.4f (%.1f s)", trial.number, epoch, cfg["n_epochs"], metric, value,
                        time.perf_counter() - t0)
            if self.deadline is not None and time.monotonic() >= self.deadline and epoch < cfg["n_epochs"]:
                raise _Deadline()
            if epoch < cfg["n_epochs"] and trial.should_prune():  # (after the last epoch nothing is saved)
                raise optuna.TrialPruned(f"{metric} {value:.4f} after epoch {epoch}")

        try:
            Trainer(model, self.data.train, **{k: cfg[k] for k in TRAIN_KEYS}, seed=self.seed, device=self.device,
                    progress=self.progress, item_map=self.data.train.item_map, config=cfg,
                    on_epoch_end=on_epoch_end).fit()
        except _Deadline:
            trial.set_user_attr("stopped", "time budget")
        except FloatingPointError as exc:  # diverged (NaN loss or scores): a bad point, not an error
            trial.set_user_attr("diverged", str(exc))
            raise optuna.TrialPruned(f"diverged: {exc}") from None
        except KeyboardInterrupt:  # run this point again when the study resumes
            trial.set_user_attr("interrupted", True)
            trial.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        values = history[metric]
        best = max(range(len(values)), key=values.__getitem__)
        trial.set_user_attr("best_epoch", best + 1)
        return values[best]


def _format_params(params: dict) -> str:
    from .report import clean_params
    params = clean_params(params)
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def trial_line(study, trial, metric: str) -> str:
    """The progress line of a finished trial: state, metric, epochs, seconds, parameters."""
    attrs = trial.user_attrs
    seconds = trial.duration.total_seconds() if trial.duration is not None else float("nan")
    epochs = attrs.get("epochs", 0)
    state = trial.state.name.lower()
    if state == "complete":
        what = f"complete  {metric} {trial.value:.4f} (epoch {attrs.get('best_epoch')}/{epochs}"
        what += ", stopped at the time budget)" if attrs.get("stopped") else ")"
    elif "diverged" in attrs:
        what = f"pruned    diverged ({attrs['diverged'][:60]})"
    elif state == "pruned":
        last = trial.intermediate_values.get(epochs)
        what = f"pruned    {metric} {last:.4f} after epoch {epochs}" if last is not None else "pruned"
    else:
        what = state
    try:
        best = study.best_trial
        best_txt = f"best #{best.number} {best.value:.4f}"
    except ValueError:
        best_txt = "no complete trial yet"
    return f"trial {trial.number:3d}  {what}  {seconds:7.1f} s  [{best_txt}]  {_format_params(trial.params)}"


def tune(train, valid=None, *, valid_days: float = 1.0, preset: str | None = None, config=None, params=None,
         space=None, metric: str = "recall@20", trials: int | None = None, timeout: float | None = None,
         out_dir="gru4rec-tune", storage: str | None = None, study_name: str = "gru4rec", pruner="median",
         prune_after: int = 2, prune_startup: int = 3, startup_trials: int = 10, seed: int = 42, device="cpu", progress: bool = False,
         eval_batch_size: int = 512, retrain: bool = False, save_model=None, top: int = 10, plot: bool = True,
         session_key: str = "SessionId", item_key: str = "ItemId", time_key: str = "Time", emit=None) -> dict:
    """Search GRU4Rec's hyperparameters with Optuna on TRAIN's validation data; write the results.

    train / valid: event files (or events DataFrames as `read_events` gives); valid=None splits
    TRAIN by time (sessions starting in its last `valid_days` days validate; see
    `tuning.validation`). preset / config / params: fixed values (`tuning.config`); space: a
    JSON file, parsed JSON, or a list of `Param` (None: the default space of the loss, see
    `tuning.space`). metric: "recall@N" or "mrr@N". trials: the study's total of complete and
    pruned trials to reach (default 50 when `timeout` is None too); timeout: seconds for this
    call (no trial starts after it; the running one ends at its next epoch's end with the epochs
    it has). storage: an Optuna RDB URL (default sqlite:///<out_dir>/study.db); study_name: the
    study in it (loaded when it exists: the run resumes). pruner: "median", "hyperband", "none" or
    an Optuna pruner; prune_after: the first epoch at which a trial may be pruned; prune_startup:
    finished trials before the median pruner prunes.
    startup_trials: random trials before TPE. seed: every trial's training seed, and the
    sampler's (plus the number of trials a resumed study already has). emit: called with each progress line (default:
    logging). retrain: train on all of TRAIN with the best configuration and save it to
    `save_model` (default <out_dir>/model.pt).

    Writes into out_dir: best_config.json (`gru4rec train --config` reads it), trials.csv,
    summary.json, tune.png (with `plot`). Returns {"study", "best_value", "best_trial",
    "best_config", "table", "files", "validation"} (+ "model" with retrain).
    """
    optuna = import_optuna()
    from . import report
    emit = emit or (lambda line: logger.info("%s", line))
    metric, cutoff = parse_metric(metric)
    if trials is not None and int(trials) < 1:
        raise TuneError(f"trials must be >= 1, got {trials}")
    if timeout is not None and not float(timeout) > 0:
        raise TuneError(f"timeout must be > 0 seconds, got {timeout}")
    if trials is None and timeout is None:
        trials = 50
    if int(prune_after) < 1:
        raise TuneError(f"prune_after must be >= 1 (an epoch), got {prune_after}")
    if space is not None and not (isinstance(space, list) and all(hasattr(p, "suggest") for p in space)):
        space = load_space(space) if isinstance(space, (str, os.PathLike)) else parse_space(space)
    setup = TrialConfig(preset=preset, config=config, params=params, space=space)
    if not setup.space:
        raise SpaceError("nothing to search: --params/--config fix every parameter of the space")
    if int(prune_startup) < 0:
        raise TuneError(f"prune_startup must be >= 0, got {prune_startup}")
    pruner = make_pruner(pruner, int(prune_after), int(setup.fixed["n_epochs"]), optuna, int(prune_startup))

    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    url = storage or "sqlite:///" + os.path.abspath(os.path.join(out_dir, "study.db"))
    rdb = open_storage(url, optuna)
    data = load_tuning_data(train, valid, valid_days, session_key, item_key, time_key)

    with _optuna_verbosity(optuna, optuna.logging.WARNING):
        study = optuna.create_study(storage=rdb, study_name=study_name, direction="maximize", pruner=pruner,
                                    load_if_exists=True)
    # A resumed study's sampler must not replay the random points it drew before: its seed moves on
    # with the number of trials the study has.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials), n_startup_trials=int(startup_trials),
                                               multivariate=True)
    _check_or_record_study(study, metric, setup, data.info, url)
    done_states = tuple(getattr(optuna.trial.TrialState, s) for s in DONE_STATES)
    done = len(study.get_trials(deepcopy=False, states=done_states))
    emit(f"study {study_name!r} in {mask_url(url)}: {done} trial(s) done; searching {len(setup.space)} parameter(s) "
         f"for the best validation {metric} ({data.info['valid']['cases']} cases)")
    if preset and not study.trials:
        point = setup.preset_point()
        if point:
            study.enqueue_trial(point, user_attrs={"preset": preset})
            emit(f"trial 0 is the preset {preset!r}: {_format_params(point)}")
    t0 = time.monotonic()
    deadline = t0 + float(timeout) if timeout is not None else None
    objective = Objective(setup, data, metric, cutoff, seed=seed, device=device, progress=progress,
                          eval_batch_size=eval_batch_size, deadline=deadline, optuna=optuna)
    callbacks = [lambda st, tr: emit(trial_line(st, tr, metric))]
    if trials is not None:
        callbacks.append(optuna.study.MaxTrialsCallback(int(trials), states=done_states))
    if trials is not None and done >= int(trials):
        emit(f"the study already has {done} >= {trials} trials: nothing to search")
    else:
        with _optuna_verbosity(optuna, optuna.logging.ERROR):
            # Our own progress line per trial; an error inside a trial ends the run with its own message.
            study.optimize(objective, n_trials=None if trials is None else int(trials) - done, timeout=timeout,
                           callbacks=callbacks)

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise TuneError(f"no trial of study {study_name!r} completed (all pruned or failed); run more trials")
    best = study.best_trial
    best_config = dict(best.user_attrs["config"], n_epochs=int(best.user_attrs.get("best_epoch", 0)) or
                       best.user_attrs["config"]["n_epochs"])
    result = report.write_outputs(study, best, best_config, metric, out_dir, top=top, plot=plot,
                                  extra={"validation": data.info, "study_name": study_name, "storage": mask_url(url),
                                         "space": [p.to_json() for p in setup.space],
                                         "fixed": config_for_file(setup.fixed), "seed": seed})
    emit(result["table"])
    emit(f"best: trial {best.number}, validation {metric} {best.value:.4f}; config written to "
         f"{result['files']['config']}")
    result.update(study=study, best_value=best.value, best_trial=best.number, best_config=best_config,
                  validation=data.info)
    if retrain:
        path = os.fspath(save_model) if save_model else os.path.join(out_dir, "model.pt")
        result["model"] = retrain_best(data, best_config, path, seed=seed, device=device, progress=progress,
                                       tuning={"study_name": study_name, "trial": best.number, "metric": metric,
                                               "valid_value": best.value})
        result["files"]["model"] = path
        emit(f"retrained on all of TRAIN with the best config; model saved to {path}")
    return result


@contextlib.contextmanager
def _optuna_verbosity(optuna, level: int):
    """Optuna's own logging at `level` (at least) for a while."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(max(before, level))
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


def _check_or_record_study(study, metric: str, setup: TrialConfig, info: dict, url: str) -> None:
    """A new study records its metric and space; a resumed one must have the same metric."""
    attrs = study.user_attrs
    if "metric" not in attrs:
        study.set_user_attr("metric", metric)
        study.set_user_attr("space", [p.to_json() for p in setup.space])
        study.set_user_attr("validation", json.loads(json.dumps(info, default=float)))
        return
    if attrs["metric"] != metric:
        raise TuneError(f"study {study.study_name!r} in {mask_url(url)} maximises {attrs['metric']}, not {metric}; "
                        "use the same --metric or another --study-name")
    if attrs.get("space") != [p.to_json() for p in setup.space]:
        logger.warning("study %r was started with another search space; its trials are kept", study.study_name)


def retrain_best(data, cfg: dict, path: str, *, seed: int, device, progress: bool, tuning: dict):
    """Train on all of TRAIN with `cfg` and save the model (checkpoint with the item map) to `path`."""
    import torch

    from ..checkpoint import save_checkpoint
    from ..cli import MODEL_KEYS, TRAIN_KEYS, resolve_config
    from ..model import GRU4Rec
    from ..train import train as train_model
    cfg = resolve_config(config_file=None, params=None, explicit=cfg)  # as `gru4rec train --config` would
    full = data.train if data.info["source"] == "file" else full_training_data(data)
    torch.manual_seed(seed)
    model = GRU4Rec(full.n_items, **{k: cfg[k] for k in MODEL_KEYS})
    model.item_map = full.item_map
    summary = train_model(model, full, **{k: cfg[k] for k in TRAIN_KEYS}, seed=seed, device=device,
                          progress=progress, item_map=full.item_map, config=cfg)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    save_checkpoint(path, model, None, cfg, full.item_map, cfg["n_epochs"],
                    {"history": summary["epochs"], "tuning": tuning})
    return model
