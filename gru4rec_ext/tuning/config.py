"""The hyperparameters of a tuning trial.

A trial's configuration merges, later over earlier: `gru4rec train`'s defaults < the loss family's
fixed settings (`space.DEFAULT_SPACES`) < --preset < --config < --params < the values the trial
samples. --config and --params FIX what they name: those names leave the search. Of
`final_activation` and `elu_param` (the authors' name for it: 0 = linear, a > 0 = elu-a) the later
one wins, and the other is made to agree. `n_layers` (a tuning-only name) repeats the hidden size:
layers = [layers[0]] * n_layers.
"""
from __future__ import annotations

import logging

from .space import Param, SpaceError, default_space, known_names

logger = logging.getLogger("gru4rec_ext")

_ALIASES = {"elu_param": "final_activation", "final_activation": "elu_param"}


def parse_params(params) -> dict:
    """--params as "key=value,key=value" (layers as 100/100) or a dict -> {key: parsed value}."""
    names = known_names()
    if params is None:
        return {}
    if isinstance(params, dict):
        items = list(params.items())
    else:
        items = []
        for item in filter(None, (p.strip() for p in str(params).split(","))):
            if "=" not in item:
                raise SpaceError(f"bad --params entry {item!r}: expected key=value")
            items.append(tuple(s.strip() for s in item.split("=", 1)))
    out = {}
    for key, value in items:
        if key not in names:
            raise SpaceError(f"unknown parameter {key!r} in --params; known: {', '.join(sorted(names))}")
        try:
            out[key] = names[key](value)
        except (TypeError, ValueError) as exc:
            raise SpaceError(f"bad value for parameter {key!r}: {value!r} ({exc})") from None
    return out


def _elu_param_of(final_activation: str):
    """The authors' elu_param of a final activation (None for tanh or an unknown name)."""
    if final_activation == "linear":
        return 0.0
    if isinstance(final_activation, str) and final_activation.startswith("elu-"):
        try:
            return float(final_activation[4:])
        except ValueError:
            return None
    return None


def merge(layers: list[dict]) -> dict:
    """Merge config layers (later wins); final_activation / elu_param and n_layers as the module says."""
    from ..presets import final_activation_from_elu_param
    cfg, activation = {}, None
    for layer in layers:
        for key in sorted(layer, key=lambda k: k == "final_activation"):  # in one layer final_activation wins
            cfg[key] = layer[key]
            if key == "final_activation":
                activation = layer[key]
            elif key == "elu_param":
                activation = final_activation_from_elu_param(layer[key])
    cfg["final_activation"] = activation or final_activation_from_elu_param(cfg.get("elu_param", 0.0))
    elu = _elu_param_of(cfg["final_activation"])
    if elu is not None:
        cfg["elu_param"] = elu
    n_layers = cfg.pop("n_layers", None)
    if n_layers is not None:
        if int(n_layers) < 1:
            raise SpaceError(f"n_layers must be >= 1, got {n_layers}")
        cfg["layers"] = [cfg["layers"][0]] * int(n_layers)
    return cfg


class TrialConfig:
    """The fixed part of every trial's configuration and the searched parameters.

    `preset`: a preset name (base values; its point is also the first trial, see `preset_point`);
    `config`: a dict or a JSON file (as `gru4rec train --config`); `params`: a dict or "k=v,...";
    `space`: a list of `Param` (None: the default space of the loss). The loss (from params,
    config, preset, else cross-entropy) chooses the default space and the family's fixed settings.
    """

    def __init__(self, preset=None, config=None, params=None, space: list[Param] | None = None):
        from ..cli import DEFAULTS, CLIError, read_config_file
        from ..presets import get_preset
        self.preset = get_preset(preset) if preset else {}
        try:
            self.config = read_config_file(config) if isinstance(config, str) else dict(config or {})
        except CLIError as exc:
            raise SpaceError(str(exc)) from None
        self.config = parse_params(self.config)
        self.params = parse_params(params)
        self.loss = merge([DEFAULTS, self.preset, self.config, self.params])["loss"]
        self.family_fixed, default_search = default_space(self.loss)
        self.layers = [dict(DEFAULTS), self.family_fixed, self.preset, self.config, self.params]
        fixed_names = set(self.config) | set(self.params)
        fixed_names |= {_ALIASES[n] for n in fixed_names if n in _ALIASES}
        search = list(space) if space is not None else default_search
        self.dropped = [p.name for p in search if p.name in fixed_names]
        self.space = [p for p in search if p.name not in fixed_names]
        if self.dropped:
            logger.info("fixed by --config/--params, not searched: %s", ", ".join(self.dropped))
        self.fixed = merge(self.layers)  # what every trial starts from (validates the fixed values)

    def build(self, sampled: dict) -> dict:
        """The full configuration of a trial that sampled `sampled` ({name: value})."""
        names = known_names()
        # floats on a step grid come back as 0.30000000000000004: keep 12 significant digits
        parsed = {k: names[k](float(f"{v:.12g}") if isinstance(v, float) else v) for k, v in sampled.items()}
        return merge(self.layers + [parsed])

    def preset_point(self) -> dict:
        """The preset's values of the searched parameters that the space holds (for enqueue_trial)."""
        if not self.preset:
            return {}
        from ..cli import DEFAULTS
        cfg = merge([dict(DEFAULTS), self.family_fixed, self.preset])
        values = dict(cfg)
        layers = cfg["layers"]
        if len(set(layers)) == 1:
            values["layers"], values["n_layers"] = layers[0], len(layers)
        else:
            values.pop("layers")
        point = {}
        for p in self.space:
            if p.name not in values:
                continue
            v = values[p.name]
            if p.type == "categorical":
                match = [c for c in p.choices if c == v or (isinstance(c, str) and c == str(v))]
                if match:
                    point[p.name] = match[0]
                continue
            if p.contains(v):
                point[p.name] = int(v) if p.type == "int" else float(v)
            else:
                logger.info("the preset's %s=%s is outside the search space: the first trial samples it", p.name, v)
        return point


def config_for_file(cfg: dict) -> dict:
    """A trial's configuration as the JSON object `gru4rec train --config` reads (no null values)."""
    from ..cli import PARAMS
    return {k: v for k, v in cfg.items() if k in PARAMS and v is not None}
