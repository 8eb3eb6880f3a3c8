"""Published hyperparameters: the authors' parameter files for the official GRU4Rec (PyTorch version).

Checked against `REFERENCE.md` (the parameters its numbers were run with): `rsc15` and
`diginetica`. The others (`yoochoose`, `retailrocket`, `rees46`, `coveo`) are written from the
authors' published parameter files as best we know them and were NOT checked here.

Keys are the options of `gru4rec train` (and of `GRU4Rec` / `train`). `elu_param` is the
authors' name for the final activation: 0 = linear, a > 0 = elu-a.
"""
from __future__ import annotations

import copy

PRESETS: dict[str, dict] = {
    "rsc15": dict(loss="cross-entropy", constrained_embedding=True, embedding=0, elu_param=0.0, layers=[100],
                  n_epochs=10, batch_size=32, dropout_p_embed=0.0, dropout_p_hidden=0.4, learning_rate=0.2,
                  momentum=0.2, n_sample=2048, sample_alpha=0.5, bpreg=0.0, logq=1.0),
    "diginetica": dict(loss="bpr-max", constrained_embedding=True, embedding=0, elu_param=1.0, layers=[512],
                       n_epochs=10, batch_size=128, dropout_p_embed=0.5, dropout_p_hidden=0.3, learning_rate=0.05,
                       momentum=0.15, n_sample=2048, sample_alpha=0.3, bpreg=0.9, logq=0.0),
    # Not checked against REFERENCE.md:
    "yoochoose": dict(loss="cross-entropy", constrained_embedding=True, embedding=0, elu_param=0.0, layers=[480],
                      n_epochs=10, batch_size=48, dropout_p_embed=0.0, dropout_p_hidden=0.2, learning_rate=0.07,
                      momentum=0.0, n_sample=2048, sample_alpha=0.2, bpreg=0.0, logq=1.0),
    "retailrocket": dict(loss="bpr-max", constrained_embedding=True, embedding=0, elu_param=0.5, layers=[224],
                         n_epochs=10, batch_size=80, dropout_p_embed=0.5, dropout_p_hidden=0.05, learning_rate=0.05,
                         momentum=0.4, n_sample=2048, sample_alpha=0.4, bpreg=1.95, logq=0.0),
    "rees46": dict(loss="cross-entropy", constrained_embedding=True, embedding=0, elu_param=0.0, layers=[512],
                   n_epochs=10, batch_size=240, dropout_p_embed=0.45, dropout_p_hidden=0.0, learning_rate=0.065,
                   momentum=0.0, n_sample=2048, sample_alpha=0.5, bpreg=0.0, logq=1.0),
    "coveo": dict(loss="bpr-max", constrained_embedding=True, embedding=0, elu_param=1.0, layers=[512],
                  n_epochs=10, batch_size=144, dropout_p_embed=0.35, dropout_p_hidden=0.0, learning_rate=0.05,
                  momentum=0.0, n_sample=2048, sample_alpha=0.2, bpreg=0.9, logq=0.0),
}
CHECKED = ("rsc15", "diginetica")


def get_preset(name: str) -> dict:
    """A copy of preset `name`; ValueError naming the known presets otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(sorted(PRESETS))}")
    return copy.deepcopy(PRESETS[name])


def final_activation_from_elu_param(elu_param: float) -> str:
    """The authors' elu_param -> our final_activation ("linear" for 0, "elu-<a>" otherwise)."""
    elu_param = float(elu_param)
    if elu_param < 0:
        raise ValueError(f"elu_param must be >= 0, got {elu_param}")
    return "linear" if elu_param == 0 else f"elu-{elu_param:g}"
