"""Search spaces of `gru4rec tune`: the default space per loss family, and --space FILE.json.

The default spaces are the authors' Optuna parameter spaces for the official GRU4Rec
(`paramspaces/gru4rec_xe_standard_parspace.json`, `gru4rec_bprmax_standard_parspace.json` in
hidasib/GRU4Rec_PyTorch_Official, the ranges their published parameter files came from), with
their fixed settings (`logq=1` for cross-entropy, `n_sample=2048`, shared embedding, 10 epochs):

| parameter | cross-entropy | bpr-max | top1-max, bpr, top1 |
|---|---|---|---|
| layers (hidden size of the one layer) | 64..512 step 32 | same | same |
| batch_size | 32..256 step 16 | same | same |
| learning_rate | 0.01..0.25 step 0.005 | same | same |
| dropout_p_embed | 0..0.5 step 0.05 | same | same |
| dropout_p_hidden | 0..0.7 step 0.05 | same | same |
| momentum | 0..0.9 step 0.05 | same | same |
| sample_alpha | 0..1 step 0.1 | same | same |
| bpreg | - | 0..2 step 0.05 | - |
| final_activation | linear (fixed: softmax over the scores) | linear, elu-0.5, elu-1 | same as bpr-max |

(The authors search `elu_param` in {0, 0.5, 1}; here it is the same choice written as
`final_activation`. The last column has no published space: it is the bpr-max space without bpreg.)

A space file (`--space FILE.json`) replaces the searched parameters (the family's fixed settings
stay, below --preset/--config/--params). Its format, either of:

* a JSON list (or JSON lines, one object per line, as the authors' files are) of
  `{"name": "learning_rate", "type": "float", "low": 0.01, "high": 0.25, "step": 0.005, "log": false}`;
  `type` is `int`, `float` or `categorical` (`"choices": [...]`); the authors' spelling
  (`"dtype"`, `"values": [low, high]` or the choices) is accepted, so their files load unchanged;
* a JSON object `{"learning_rate": {"type": "float", "low": 0.01, "high": 0.25, "log": true},
  "final_activation": ["linear", "elu-1"], ...}`: a list is a categorical choice.

Names are the hyperparameters of `gru4rec train` (`layers` is the hidden size, the same for every
layer) plus `n_layers` (the number of GRU layers, default 1).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

TYPES = ("int", "float", "categorical")
EXTRA_NAMES = {"n_layers": int}  # searchable, not a `gru4rec train` option: layers = [H] * n_layers
_KEYS = {"name", "type", "dtype", "low", "high", "step", "log", "choices", "values"}


class SpaceError(ValueError):
    """A bad search space: the message names the parameter and, for a file, the file."""


def known_names() -> dict:
    """name -> value parser of everything a space (or tune's --params) may name."""
    from ..cli import PARAMS
    return {**PARAMS, **EXTRA_NAMES}


@dataclass(frozen=True)
class Param:
    """One searched hyperparameter: an int or float range (optional step, log scale) or choices."""
    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    step: float | int | None = None
    log: bool = False
    choices: tuple = field(default_factory=tuple)

    def suggest(self, trial):
        """The value of this parameter in an Optuna trial (`trial.suggest_*`)."""
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        if self.type == "float":
            return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def contains(self, value) -> bool:
        """True when `value` is one of the choices or inside [low, high] (off the step grid too)."""
        if self.type == "categorical":
            return any(type(value) is type(c) and value == c for c in self.choices) or \
                (isinstance(value, (int, float)) and any(isinstance(c, (int, float)) and not isinstance(c, bool)
                                                         and float(c) == float(value) for c in self.choices))
        try:
            v = float(value)
        except (TypeError, ValueError):
            return False
        return float(self.low) <= v <= float(self.high) and (self.type == "float" or v == int(v))

    def to_json(self) -> dict:
        if self.type == "categorical":
            return {"name": self.name, "type": self.type, "choices": list(self.choices)}
        out = {"name": self.name, "type": self.type, "low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out

    def describe(self) -> str:
        if self.type == "categorical":
            return f"{self.name}: one of {list(self.choices)}"
        scale = ", log scale" if self.log else ""
        step = f" step {self.step:g}" if self.step is not None else ""
        return f"{self.name}: {self.type} {self.low:g}..{self.high:g}{step}{scale}"


def _p(name, typ, low=None, high=None, step=None, log=False, choices=()):
    return Param(name, typ, low, high, step, log, tuple(choices))


# The authors' ranges (see the module docstring).
_COMMON = (
    _p("layers", "int", 64, 512, 32),
    _p("batch_size", "int", 32, 256, 16),
    _p("learning_rate", "float", 0.01, 0.25, 0.005),
    _p("dropout_p_embed", "float", 0.0, 0.5, 0.05),
    _p("dropout_p_hidden", "float", 0.0, 0.7, 0.05),
    _p("momentum", "float", 0.0, 0.9, 0.05),
    _p("sample_alpha", "float", 0.0, 1.0, 0.1),
)
_FINAL_ACTIVATION = _p("final_activation", "categorical", choices=("linear", "elu-0.5", "elu-1"))
_FIXED = dict(n_sample=2048, constrained_embedding=True, embedding=0, n_epochs=10)

DEFAULT_SPACES = {
    "cross-entropy": {"fixed": {**_FIXED, "logq": 1.0, "final_activation": "linear"}, "search": _COMMON},
    "bpr-max": {"fixed": {**_FIXED, "logq": 0.0},
                "search": _COMMON + (_p("bpreg", "float", 0.0, 2.0, 0.05), _FINAL_ACTIVATION)},
    "ranking": {"fixed": {**_FIXED, "logq": 0.0}, "search": _COMMON + (_FINAL_ACTIVATION,)},
}


def loss_family(loss: str) -> str:
    """"cross-entropy", "bpr-max", or "ranking" (top1-max, bpr, top1): the key of DEFAULT_SPACES."""
    from ..train import LOSSES
    if loss not in LOSSES:
        raise SpaceError(f"unknown loss {loss!r}; known: {', '.join(LOSSES)}")
    return loss if loss in ("cross-entropy", "bpr-max") else "ranking"


def default_space(loss: str) -> tuple[dict, list[Param]]:
    """(fixed settings, searched parameters) of the default space for `loss`."""
    family = DEFAULT_SPACES[loss_family(loss)]
    return dict(family["fixed"]), list(family["search"])


def space_to_json(space: list[Param]) -> list[dict]:
    return [p.to_json() for p in space]


# ----------------------------------------------------------------------------------------------
# reading a space


def _number(where: str, key: str, value, integer: bool):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpaceError(f"{where}: {key!r} must be a finite number, got {value!r}")
    if integer and value != int(value):
        raise SpaceError(f"{where}: {key!r} must be an integer for type 'int', got {value!r}")
    return int(value) if integer else float(value)


def parse_param(name: str, spec, where: str = "search space") -> Param:
    """One entry of a space: `spec` is an object (type, low/high or choices, ...) or a list of choices."""
    names = known_names()
    if not isinstance(name, str) or name not in names:
        raise SpaceError(f"{where}: unknown parameter {name!r} in the search space; known: "
                         f"{', '.join(sorted(names))}")
    where = f"{where}, parameter {name!r}"
    if isinstance(spec, list):
        spec = {"type": "categorical", "choices": spec}
    if not isinstance(spec, dict):
        raise SpaceError(f"{where}: expected an object (type, low, high, ...) or a list of choices, got {spec!r} "
                         "(fix a value with --params instead)")
    extra = set(spec) - _KEYS
    if extra:
        raise SpaceError(f"{where}: unknown key(s) {sorted(extra)}; allowed: {sorted(_KEYS - {'name'})}")
    typ = spec.get("type", spec.get("dtype"))
    choices = spec.get("choices")
    values = spec.get("values")
    if typ is None:
        if choices is not None:
            typ = "categorical"
        else:
            bounds = values if isinstance(values, list) else [spec.get("low"), spec.get("high")]
            ints = all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
            typ = "int" if ints and names[name] is not float else "float"
    if typ not in TYPES:
        raise SpaceError(f"{where}: type must be one of {TYPES}, got {typ!r}")
    if typ == "categorical":
        choices = choices if choices is not None else values
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}: a categorical parameter needs a non-empty list of choices")
        for c in choices:
            if c is not None and not isinstance(c, (bool, int, float, str)):
                raise SpaceError(f"{where}: choice {c!r} is not a number, string, boolean or null")
            _check_value(name, c, where)
        return Param(name, typ, choices=tuple(choices))
    if values is not None and ("low" in spec or "high" in spec):
        raise SpaceError(f"{where}: give either low/high or values [low, high], not both")
    if values is not None:
        if not isinstance(values, list) or len(values) != 2:
            raise SpaceError(f"{where}: values must be [low, high] for type {typ!r}, got {values!r}")
        low, high = values
    else:
        if "low" not in spec or "high" not in spec:
            raise SpaceError(f"{where}: type {typ!r} needs low and high")
        low, high = spec["low"], spec["high"]
    integer = typ == "int"
    low, high = _number(where, "low", low, integer), _number(where, "high", high, integer)
    if low > high:
        raise SpaceError(f"{where}: low ({low}) is above high ({high})")
    step = spec.get("step")
    if step is not None:
        step = _number(where, "step", step, integer)
        if step <= 0:
            raise SpaceError(f"{where}: step must be > 0, got {step}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}: log must be true or false, got {log!r}")
    if log and step is not None and not (integer and step == 1):
        raise SpaceError(f"{where}: a log-scale parameter cannot have a step")
    if log and low <= 0:
        raise SpaceError(f"{where}: a log-scale parameter needs low > 0, got {low}")
    for v in (low, high):
        _check_value(name, v, where)
    return Param(name, typ, low, high, step, log)


def _check_value(name: str, value, where: str) -> None:
    parser = known_names()[name]
    try:
        parser(value)
    except (TypeError, ValueError) as exc:
        raise SpaceError(f"{where}: {value!r} is not a valid value ({exc})") from None


def parse_space(data, where: str = "search space") -> list[Param]:
    """A space from parsed JSON: a list of {"name", ...} objects or an object {name: spec}."""
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = []
        for i, entry in enumerate(data):
            if not isinstance(entry, dict) or "name" not in entry:
                raise SpaceError(f"{where}: entry {i + 1} must be an object with a 'name', got {entry!r}")
            items.append((entry["name"], {k: v for k, v in entry.items() if k != "name"}))
    else:
        raise SpaceError(f"{where}: expected a JSON list of parameters or an object {{name: spec}}, "
                         f"got {type(data).__name__}")
    if not items:
        raise SpaceError(f"{where}: the search space is empty")
    space, seen = [], set()
    for name, spec in items:
        if name in seen:
            raise SpaceError(f"{where}: parameter {name!r} appears twice")
        seen.add(name)
        space.append(parse_param(name, spec, where))
    return space


def load_space(source) -> list[Param]:
    """A space from a JSON file path (JSON, or JSON lines as the authors' files), or parsed JSON."""
    if not isinstance(source, (str, os.PathLike)):
        return parse_space(source)
    path = os.fspath(source)
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise SpaceError(f"space file {path!r} does not exist") from None
    except OSError as exc:
        raise SpaceError(f"space file {path!r} cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as first:
        lines = [line for line in text.splitlines() if line.strip()]
        try:  # JSON lines: one parameter object per line
            data = [json.loads(line) for line in lines]
        except json.JSONDecodeError:
            raise SpaceError(f"space file {path!r} is not valid JSON: {first}") from None
        if not lines:
            raise SpaceError(f"space file {path!r} is empty") from None
    return parse_space(data, f"space file {path!r}")
