"""What a tuning run leaves behind: the best config, a top-trials table, trials.csv, a summary and a plot."""
from __future__ import annotations

import json
import logging
import os

logger = logging.getLogger("gru4rec_ext")


def _atomic_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=float)
        f.write("\n")
    os.replace(tmp, path)


def clean_params(params: dict) -> dict:
    """Parameters with floats to 12 significant digits (a step grid gives 0.30000000000000004)."""
    return {k: float(f"{v:.12g}") if isinstance(v, float) else v for k, v in params.items()}


def trial_rows(study) -> list[dict]:
    """One row per finished trial: number, state, value, epochs, seconds, then its parameters."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state.name in ("RUNNING", "WAITING"):
            continue
        a = t.user_attrs
        last = t.intermediate_values.get(a.get("epochs")) if a.get("epochs") else None
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     "last_value": last, "best_epoch": a.get("best_epoch"), "epochs": a.get("epochs", 0),
                     "seconds": t.duration.total_seconds() if t.duration is not None else None,
                     "note": a.get("diverged") or a.get("stopped") or ("preset " + a["preset"] if "preset" in a else ""),
                     **clean_params(t.params)})
    return rows


def top_table(study, metric: str, top: int = 10) -> str:
    """The `top` best complete trials as an aligned text table, and counts of the others."""
    rows = sorted((r for r in trial_rows(study) if r["state"] == "complete"), key=lambda r: -r["value"])
    counts = {}
    for r in trial_rows(study):
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    head = ["rank", "trial", metric, "epoch", "seconds", "parameters"]
    body = []
    for rank, r in enumerate(rows[:top], 1):
        params = " ".join(f"{k}={r[k]:.4g}" if isinstance(r[k], float) else f"{k}={r[k]}"
                          for k in r if k not in ("trial", "state", "value", "last_value", "best_epoch", "epochs",
                                                  "seconds", "note"))
        body.append([str(rank), str(r["trial"]), f"{r['value']:.4f}", f"{r['best_epoch']}/{r['epochs']}",
                     f"{r['seconds']:.1f}" if r["seconds"] is not None else "-", params])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line[:-1], widths)) + "  " + line[-1] for line in [head] + body]
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    return f"top {min(top, len(rows))} of {len(rows)} complete trials ({summary}):\n" + "\n".join(lines)


def importances(study) -> tuple[dict, str]:
    """(parameter -> importance, method): fANOVA when scikit-learn is there, else PED-ANOVA."""
    import optuna
    try:
        import sklearn  # noqa: F401  (fANOVA's random forest)
        evaluator, name = optuna.importance.FanovaImportanceEvaluator(seed=0), "fANOVA"
    except ImportError:
        evaluator, name = optuna.importance.PedAnovaImportanceEvaluator(), "PED-ANOVA"
    return optuna.importance.get_param_importances(study, evaluator=evaluator), name


def plot_study(study, metric: str, path: str) -> str:
    """A PNG of the optimisation history (left) and the parameter importances (right)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = trial_rows(study)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    done = [r for r in rows if r["state"] == "complete"]
    pruned = [r for r in rows if r["state"] == "pruned" and r["last_value"] is not None]
    ax1.scatter([r["trial"] for r in done], [r["value"] for r in done], s=22, color="tab:blue",
                label="complete (best epoch)")
    if pruned:
        ax1.scatter([r["trial"] for r in pruned], [r["last_value"] for r in pruned], s=22, marker="x",
                    color="tab:gray", label="pruned (last epoch)")
    best, xs, ys = float("-inf"), [], []
    for r in sorted(done, key=lambda r: r["trial"]):
        best = max(best, r["value"])
        xs.append(r["trial"])
        ys.append(best)
    if xs and rows:  # carry the best to the last trial
        xs.append(max(r["trial"] for r in rows))
        ys.append(best)
    ax1.step(xs, ys, where="post", color="tab:red", label="best so far")
    ax1.set_xlabel("trial")
    ax1.set_ylabel(f"validation {metric}")
    ax1.set_title("optimisation history")
    ax1.grid(alpha=0.3)
    ax1.legend(loc="best", fontsize=8)
    try:
        imp, method = importances(study)
    except Exception as exc:  # too few trials, a single value, ...: the plot says so
        imp, method = {}, f"not available: {str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__}"
    if imp:
        names = list(imp)[::-1]
        ax2.barh(names, [imp[n] for n in names], color="tab:green")
        ax2.set_xlabel("importance")
        ax2.set_title(f"parameter importances ({method}, {len(done)} complete trials)")
    else:
        ax2.axis("off")
        ax2.set_title("parameter importances")
        ax2.text(0.5, 0.5, method, ha="center", va="center", wrap=True)
    fig.suptitle(f"study {study.study_name}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_outputs(study, best, best_config: dict, metric: str, out_dir: str, *, top: int = 10, plot: bool = True,
                  extra: dict | None = None) -> dict:
    """best_config.json, trials.csv, summary.json and tune.png in out_dir; returns {"table", "files"}."""
    import pandas as pd
    files = {"config": os.path.join(out_dir, "best_config.json"), "trials": os.path.join(out_dir, "trials.csv"),
             "summary": os.path.join(out_dir, "summary.json")}
    _atomic_json(files["config"], best_config)
    pd.DataFrame(trial_rows(study)).to_csv(files["trials"], index=False)
    table = top_table(study, metric, top)
    states = {}
    for r in trial_rows(study):
        states[r["state"]] = states.get(r["state"], 0) + 1
    _atomic_json(files["summary"], {"metric": metric, "best_value": best.value, "best_trial": best.number,
                                    "best_epoch": best.user_attrs.get("best_epoch"), "best_params": clean_params(best.params),
                                    "best_config": best_config, "trials": states,
                                    "best_valid_history": best.user_attrs.get("valid"), **(extra or {})})
    if plot:
        try:
            files["plot"] = plot_study(study, metric, os.path.join(out_dir, "tune.png"))
        except ImportError as exc:
            logger.warning("no plot: %s (pip install matplotlib)", exc)
    return {"table": table, "files": files}
