"""Hyperparameter search (`gru4rec tune`): Optuna's TPE sampler and a pruner fed by per-epoch
validation metrics, trials trained in-process with the package's Trainer.

Optuna is an optional dependency (`pip install 'gru4rec-ext[tune]'`): importing this package does
not need it, `tune(...)` raises an ImportError that says how to install it.

* `space`: the default search space per loss family (the authors' ranges) and --space files;
* `config`: a trial's hyperparameters (fixed values < sampled ones);
* `validation`: the validation data (a file, or TRAIN's last days), never the test file;
* `study`: `tune(...)`, the study driver (storage, pruning, resume, retrain);
* `report`: best_config.json, the top-trials table, trials.csv, summary.json, tune.png.
"""
from .config import TrialConfig
from .space import DEFAULT_SPACES, Param, SpaceError, default_space, load_space, parse_space
from .study import TuneError, tune
from .validation import load_tuning_data

__all__ = ["tune", "TuneError", "SpaceError", "Param", "DEFAULT_SPACES", "default_space", "load_space",
           "parse_space", "TrialConfig", "load_tuning_data"]
