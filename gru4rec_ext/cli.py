"""The `gru4rec` command line: train, evaluate, recommend, tune, preprocess.

Hyperparameter precedence for `train`: preset < --config FILE.json < --params k=v,... < explicit options.
Errors in the input (unknown preset or parameter, bad value, missing or malformed file) end with
a one-line message on stderr and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

logger = logging.getLogger("gru4rec_ext")

TIE_MODES = ("standard", "conservative", "median")


def _bool(value) -> bool:
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {value!r}")


def _layers(value) -> list[int]:
    if isinstance(value, int):
        return [value]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    parts = str(value).replace("[", "").replace("]", "").replace(";", "/").replace(",", "/").split("/")
    return [int(p) for p in parts if p.strip()]


# Every hyperparameter: name -> parser of its value.
PARAMS = {
    "loss": str, "final_activation": str, "elu_param": float, "layers": _layers, "embedding": int,
    "constrained_embedding": _bool, "variant": str, "n_epochs": int, "batch_size": int,
    "dropout_p_embed": float, "dropout_p_hidden": float, "learning_rate": float, "momentum": float,
    "n_sample": int, "sample_alpha": float, "bpreg": float, "logq": float, "mask_accidental_hits": _bool,
    "shuffle": _bool, "backend": str,
}
DEFAULTS = dict(loss="cross-entropy", elu_param=0.0, layers=[100], embedding=0, constrained_embedding=True,
                variant=None, n_epochs=10, batch_size=32, dropout_p_embed=0.0, dropout_p_hidden=0.0,
                learning_rate=0.05, momentum=0.0, n_sample=2048, sample_alpha=0.5, bpreg=0.0, logq=0.0,
                mask_accidental_hits=False, shuffle=False, backend="auto")


class CLIError(Exception):
    """A user error: reported as one line, exit code 2."""


def _parse_value(key: str, value):
    if key not in PARAMS:
        raise CLIError(f"unknown parameter {key!r}; known: {', '.join(sorted(PARAMS))}")
    try:
        return PARAMS[key](value)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"bad value for parameter {key!r}: {value!r} ({exc})") from None


def parse_params(text: str) -> dict:
    """"key=value,key=value" -> {key: parsed value} (layers may be written 100/100)."""
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in item:
            raise CLIError(f"bad --params entry {item!r}: expected key=value")
        key, value = (s.strip() for s in item.split("=", 1))
        out[key] = _parse_value(key, value)
    return out


def read_config_file(config_file) -> dict:
    """The JSON object of a --config file, values unparsed; CLIError naming the file otherwise."""
    try:
        with open(config_file) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CLIError(f"config file {config_file!r} does not exist") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CLIError(f"config file {config_file!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CLIError(f"config file {config_file!r} must hold a JSON object")
    return data


def resolve_config(preset=None, config_file=None, params=None, explicit=None) -> dict:
    """Merge defaults < preset < config file < --params < explicit options into one dict."""
    from .presets import get_preset
    cfg = dict(DEFAULTS)
    if preset:
        try:
            cfg.update(get_preset(preset))
        except ValueError as exc:
            raise CLIError(str(exc)) from None
    if config_file:
        cfg.update({k: _parse_value(k, v) for k, v in read_config_file(config_file).items()})
    if params:
        cfg.update(parse_params(params))
    cfg.update({k: v for k, v in (explicit or {}).items() if v is not None})
    if "final_activation" not in cfg or cfg["final_activation"] is None:
        from .presets import final_activation_from_elu_param
        cfg["final_activation"] = final_activation_from_elu_param(cfg["elu_param"])
    return cfg


MODEL_KEYS = ("layers", "embedding", "constrained_embedding", "variant", "dropout_p_embed", "dropout_p_hidden",
              "final_activation", "backend")
TRAIN_KEYS = ("n_epochs", "batch_size", "n_sample", "sample_alpha", "loss", "bpreg", "logq", "learning_rate",
              "momentum", "mask_accidental_hits", "shuffle")


def _cutoffs_and_ties(args):
    ties = TIE_MODES if "all" in args.eval_type else tuple(m for m in TIE_MODES if m in args.eval_type)
    return tuple(sorted(set(args.measure))), ties


def _read_sessions(path, args, item_map=None, fit=False, test=False):
    from .data import ItemMap, SessionData, read_events
    if not os.path.isfile(path):
        raise CLIError(f"{path}: no such file")
    df = read_events(path, args.session_key, args.item_key, args.time_key)
    if fit:
        item_map = ItemMap.fit(df["ItemId"])  # read_events renames the key columns to SessionId, ItemId, Time
    data = SessionData.from_events(df, item_map, drop_unknown=test, name=os.fspath(path))
    return data, item_map


def _emit(text: str) -> None:
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def cmd_train(args) -> int:
    import torch

    from .checkpoint import save_checkpoint
    from .evaluate import format_metrics
    from .model import GRU4Rec
    from .train import train
    explicit = {k: getattr(args, k, None) for k in PARAMS}
    cfg = resolve_config(args.preset, args.config, args.params, explicit)
    train_data, item_map = _read_sessions(args.train, args, fit=True)
    test_data = _read_sessions(args.test, args, item_map=item_map, test=True)[0] if args.test else None
    device = torch.device(args.device) if args.device else torch.device("cpu")
    torch.manual_seed(args.seed)
    model = GRU4Rec(item_map.n_items, **{k: cfg[k] for k in MODEL_KEYS})
    model.item_map = item_map
    logger.info("model: %s", model.extra_repr())
    logger.info("config: %s", json.dumps(cfg))
    ckpt_dir = args.checkpoint_dir or (args.save_model + ".checkpoints" if args.save_model else None)
    if args.resume and ckpt_dir is None:
        raise CLIError("--resume needs --save-model or --checkpoint-dir (where the checkpoints are)")
    cutoffs, ties = _cutoffs_and_ties(args)
    summary = train(model, train_data, **{k: cfg[k] for k in TRAIN_KEYS}, seed=args.seed, device=device,
                    progress=not (args.quiet or args.no_progress), eval_data=test_data, checkpoint_dir=ckpt_dir, resume=args.resume,
                    log_json=args.json, item_map=item_map, config=cfg, cutoffs=cutoffs, tie_modes=ties,
                    cuda_graph=args.cuda_graph)
    if args.save_model:
        save_checkpoint(args.save_model, model, None, cfg, item_map, cfg["n_epochs"],
                        {"history": summary["epochs"]})
        logger.info("model saved to %s", args.save_model)
    if "metrics" in summary:
        _emit(format_metrics(summary["metrics"]))
    return 0


def cmd_evaluate(args) -> int:
    import torch

    from .checkpoint import load_checkpoint
    from .evaluate import evaluate, format_metrics
    device = torch.device(args.device) if args.device else torch.device("cpu")
    model, _, _, item_map, _ = load_checkpoint(args.model, device, backend=args.backend)
    if item_map is None:
        raise CLIError(f"{args.model}: the checkpoint holds no item map")
    data, _ = _read_sessions(args.test, args, item_map=item_map, test=True)
    cutoffs, ties = _cutoffs_and_ties(args)
    metrics = evaluate(model, data, batch_size=args.batch_size, cutoffs=cutoffs, tie_modes=ties, device=device,
                       progress=not (args.quiet or args.no_progress))
    _emit(format_metrics(metrics))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(metrics, f, indent=2, default=float)
    return 0


def _label(text: str, item_map):
    """A command-line item label -> the map's label type (ints stay ints when the map holds ints)."""
    try:
        as_int = int(text)
    except ValueError:
        return text
    if item_map is None:
        return as_int
    from .recommend import encode_items
    _, known = encode_items(item_map, [as_int])
    return as_int if bool(known[0]) else text


def cmd_recommend(args) -> int:
    import torch

    from .checkpoint import load_checkpoint
    from .recommend import SessionRecommender
    device = torch.device(args.device) if args.device else torch.device("cpu")
    model = load_checkpoint(args.model, device).model
    if args.session is not None:
        items = [_label(s.strip(), model.item_map) for s in args.session.split(",") if s.strip()]
        labels, scores = model.recommend(items, k=args.k, exclude_seen=args.exclude_seen)
        for rank, (label, score) in enumerate(zip(labels, scores.tolist()), 1):
            _emit(f"{rank}\t{label}\t{score:.6g}")
        return 0
    from .data import read_events
    if not os.path.isfile(args.events):
        raise CLIError(f"{args.events}: no such file")
    df = read_events(args.events, args.session_key, args.item_key, args.time_key)
    rec = SessionRecommender(model, k=args.k, max_sessions=args.max_sessions)
    df = df.sort_values("Time", kind="stable")  # replay in time order
    _emit(f"{args.session_key}\t{args.item_key}\trecommendations")
    sessions, items = df["SessionId"].tolist(), df["ItemId"].tolist()
    for start in range(0, len(items), args.batch_size):
        labels, _ = rec.update(sessions[start:start + args.batch_size], items[start:start + args.batch_size])
        for s, i, lab in zip(sessions[start:], items[start:], labels):
            _emit(f"{s}\t{i}\t{','.join(str(x) for x in lab)}")
    return 0


def cmd_preprocess(args) -> int:
    from . import preprocess
    if not os.path.exists(args.input):
        raise CLIError(f"{args.input}: no such file")
    fn = {"yoochoose": preprocess.preprocess_yoochoose, "diginetica": preprocess.preprocess_diginetica}[args.dataset]
    result = fn(args.input, args.out_dir)
    _emit(f"preprocessed {args.dataset} into {args.out_dir}" + (f": {result}" if result else ""))
    return 0


def cmd_tune(args) -> int:
    from .tuning import TrialConfig, load_space, tune
    from .tuning.config import config_for_file
    space = load_space(args.space) if args.space else None
    if args.show_space:
        setup = TrialConfig(args.preset, args.config, args.params, space)
        # stdout: the searched space as a --space file; stderr: what every trial fixes
        _emit("[\n" + ",\n".join("  " + json.dumps(p.to_json()) for p in setup.space) + "\n]")
        logger.info("loss %s; fixed: %s", setup.loss, json.dumps(config_for_file(setup.fixed)))
        return 0
    if args.train is None:
        raise CLIError("the training file TRAIN is required")
    for path in (args.train, args.valid):
        if path is not None and not os.path.isfile(path):
            raise CLIError(f"{path}: no such file")
    import torch
    device = torch.device(args.device) if args.device else torch.device("cpu")
    try:
        tune(args.train, args.valid, valid_days=args.valid_days, preset=args.preset, config=args.config,
             params=args.params, space=space, metric=args.metric, trials=args.trials, timeout=args.timeout,
             out_dir=args.out, storage=args.storage, study_name=args.study_name, pruner=args.pruner,
             prune_after=args.prune_after, prune_startup=args.prune_startup, startup_trials=args.startup_trials, seed=args.seed, device=device,
             progress=not (args.quiet or args.no_progress), retrain=args.retrain, save_model=args.save_model,
             top=args.top, plot=not args.no_plot, session_key=args.session_key, item_key=args.item_key,
             time_key=args.time_key, emit=_emit)
    except ImportError as exc:
        raise CLIError(str(exc)) from None
    except KeyboardInterrupt:
        sys.stderr.write("gru4rec tune: interrupted; the study is kept: run the same command to resume it\n")
        return 130
    return 0


def _add_data_keys(p):
    p.add_argument("--session-key", default="SessionId", help="session id column (default SessionId)")
    p.add_argument("--item-key", default="ItemId", help="item id column (default ItemId)")
    p.add_argument("--time-key", default="Time", help="timestamp column (default Time)")


def _add_eval_opts(p):
    p.add_argument("-m", "--measure", type=int, nargs="+", default=[1, 5, 10, 20], help="cutoffs (default 1 5 10 20)")
    p.add_argument("-e", "--eval-type", nargs="+", choices=TIE_MODES + ("all",), default=["standard"],
                   help="tie handling of the ranks (one or more, or all)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gru4rec", description="GRU4Rec session-based recommendations")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or info logs")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs stay)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's choice, and training then runs on it or on one thread, "
                             "whichever its steps measure faster; a number given here is kept)")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (and evaluate it with --test)")
    t.add_argument("train", help="training events (TSV/CSV/Parquet, optionally compressed)")
    t.add_argument("--test", help="test events evaluated after training")
    t.add_argument("--preset", help="published hyperparameters: rsc15, diginetica, yoochoose, ...")
    t.add_argument("--params", help="key=value,... hyperparameters (layers as 100/100)")
    t.add_argument("--config", help="JSON file of hyperparameters")
    for key, typ in PARAMS.items():
        flag = "--" + key.replace("_", "-")
        if typ is _bool:
            t.add_argument(flag, dest=key, type=_bool, default=None, metavar="BOOL")
        elif typ is _layers:
            t.add_argument(flag, dest=key, type=int, nargs="+", default=None, metavar="H")
        else:
            t.add_argument(flag, dest=key, type=typ, default=None)
    t.add_argument("--save-model", help="write the trained model checkpoint here")
    t.add_argument("--checkpoint-dir", help="per-epoch checkpoints (default: <save-model>.checkpoints)")
    t.add_argument("--resume", action="store_true", help="continue from the last epoch's checkpoint")
    t.add_argument("--device", help="cpu (default), cuda, cuda:1, ...")
    t.add_argument("--seed", type=int, default=42)
    t.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, default=None,
                   help="on CUDA, capture the training step as a CUDA graph and replay it (default: on; checked "
                        "against the eager step on its first replay, eager with a warning if it disagrees)")
    t.add_argument("--json", help="write per-epoch loss, events/s and the metrics as JSON here")
    _add_data_keys(t)
    _add_eval_opts(t)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a saved model on test events")
    e.add_argument("model")
    e.add_argument("test")
    e.add_argument("--device")
    e.add_argument("--batch-size", type=int, default=512)
    e.add_argument("--backend", choices=("auto", "kernels", "reference"), default="auto",
                   help="ops used for the GRU steps (default: kernels when built)")
    e.add_argument("--json")
    _add_data_keys(e)
    _add_eval_opts(e)
    e.set_defaults(func=cmd_evaluate)

    r = sub.add_parser("recommend", help="next-item recommendations from a saved model")
    r.add_argument("model")
    g = r.add_mutually_exclusive_group(required=True)
    g.add_argument("--session", help="comma-separated item ids of one session, oldest first")
    g.add_argument("--events", help="a file of session events: one recommendation line per event")
    r.add_argument("-k", type=int, default=20)
    r.add_argument("--exclude-seen", action="store_true", help="(--session) leave out the session's own items")
    r.add_argument("--batch-size", type=int, default=256, help="(--events) events per batched step")
    r.add_argument("--max-sessions", type=int, default=100_000, help="(--events) live sessions kept")
    r.add_argument("--device")
    _add_data_keys(r)
    r.set_defaults(func=cmd_recommend)

    u = sub.add_parser("tune", help="search hyperparameters (Optuna) on validation data taken from TRAIN",
                       description="Search GRU4Rec hyperparameters with Optuna (TPE, per-epoch pruning). Needs "
                                   "pip install 'gru4rec-ext[tune]'. The test file is never read.")
    u.add_argument("train", nargs="?", help="training events; its last --valid-days days validate unless --valid")
    u.add_argument("--valid", help="validation events (default: split TRAIN by time)")
    u.add_argument("--valid-days", type=float, default=1.0,
                   help="without --valid: sessions starting in TRAIN's last DAYS days validate (default 1)")
    u.add_argument("--metric", default="recall@20", help="recall@N or mrr@N on the validation data (default recall@20)")
    u.add_argument("--preset", help="base values (and the first trial) from a published preset")
    u.add_argument("--config", help="JSON file of fixed hyperparameters (taken out of the search)")
    u.add_argument("--params", help="key=value,... fixed hyperparameters (taken out of the search), e.g. loss=bpr-max")
    u.add_argument("--space", help="JSON search space replacing the default one (see the README)")
    u.add_argument("--show-space", action="store_true",
                   help="print the search space (a --space file) and, on stderr, the fixed values; then exit")
    u.add_argument("--trials", type=int, help="complete + pruned trials the study should reach (default 50 "
                                               "unless --timeout)")
    u.add_argument("--timeout", type=float, help="seconds for this run: no trial starts after it, the running one "
                                                  "stops at its next epoch end")
    u.add_argument("--out", default="gru4rec-tune", help="output folder (default gru4rec-tune)")
    u.add_argument("--storage", help="Optuna RDB URL (default sqlite:///OUT/study.db); a shared PostgreSQL/MySQL "
                                     "URL lets several processes or machines search one study")
    u.add_argument("--study-name", default="gru4rec", help="the study in the storage (resumed if it exists)")
    u.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    u.add_argument("--prune-after", type=int, default=2, help="earliest epoch at which a trial can be pruned (2)")
    u.add_argument("--prune-startup", type=int, default=3,
                   help="finished trials before the median pruner starts pruning (3)")
    u.add_argument("--startup-trials", type=int, default=10, help="random trials before TPE takes over (10)")
    u.add_argument("--retrain", action="store_true", help="then train on all of TRAIN with the best config and save it")
    u.add_argument("--save-model", help="where --retrain saves the model (default OUT/model.pt)")
    u.add_argument("--top", type=int, default=10, help="rows of the top-trials table (10)")
    u.add_argument("--no-plot", action="store_true", help="no tune.png")
    u.add_argument("--device", help="cpu (default), cuda, ...")
    u.add_argument("--seed", type=int, default=42, help="seed of the sampler and of every trial's training (42)")
    _add_data_keys(u)
    u.set_defaults(func=cmd_tune)

    p = sub.add_parser("preprocess", help="the published preprocessing of a raw dataset")
    p.add_argument("dataset", choices=("yoochoose", "diginetica"))
    p.add_argument("input")
    p.add_argument("out_dir")
    p.set_defaults(func=cmd_preprocess)
    return parser


def main(argv=None) -> int:
    """Entry point of `gru4rec` / `python -m gru4rec_ext`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING if args.quiet else logging.INFO
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(level)
    try:
        from .data import DataError
    except ImportError:  # pragma: no cover - the data module is part of the package
        DataError = ValueError
    if args.threads is not None:
        if args.threads < 1:
            sys.stderr.write(f"gru4rec: error: --threads must be >= 1, got {args.threads}\n")
            return 2
        import torch

        from .threads import set_explicit_threads
        torch.set_num_threads(args.threads)
        set_explicit_threads()  # training keeps this count (no choosing between it and one thread)
    try:
        return args.func(args)
    except (CLIError, DataError, FileNotFoundError, ValueError, NotImplementedError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sys.stderr.write(f"gru4rec {args.command}: error: {msg}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
