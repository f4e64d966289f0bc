"""Hyperparameter sweeps: Optuna samplers and pruners by name, the search space, and applying a trial's values.

A search-space entry names a TrainConfig field (`lr`, `ema_decay`, `warmup_steps`, `batch_size`, ...) or a
model constructor flag as `model_kwargs.<flag>` (`model_kwargs.d_state`, `model_kwargs.depth`,
`model_kwargs.dim`). Its distribution is a dict: `{choices = [...]}`, or `{low, high}` with optional
`log = true` and `step`; two int bounds give an integer parameter.
"""

from __future__ import annotations

import optuna

from dimstudy.study.config import SweepConfig
from dimstudy.train.config import TrainConfig, field_names, parse_set

SAMPLERS = {
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
    "cmaes": lambda seed: optuna.samplers.CmaEsSampler(seed=seed),  # needs `cmaes`; continuous spaces only
    "qmc": lambda seed: optuna.samplers.QMCSampler(seed=seed),
    "gp": lambda seed: optuna.samplers.GPSampler(seed=seed),  # needs scipy (a dependency already)
}
PRUNERS = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    "percentile": lambda: optuna.pruners.PercentilePruner(25.0, n_startup_trials=3),
    "hyperband": lambda: optuna.pruners.HyperbandPruner(),
    "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
    "none": lambda: optuna.pruners.NopPruner(),
}


def make_sampler(sweep: SweepConfig, seed: int | None = None) -> optuna.samplers.BaseSampler:
    if sweep.sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sweep.sampler!r}; valid choices: {', '.join(SAMPLERS)}")
    return SAMPLERS[sweep.sampler](seed)


def make_pruner(sweep: SweepConfig) -> optuna.pruners.BasePruner:
    if sweep.pruner not in PRUNERS:
        raise ValueError(f"unknown pruner {sweep.pruner!r}; valid choices: {', '.join(PRUNERS)}")
    return PRUNERS[sweep.pruner]()


def check_space(space: dict) -> None:
    """Every name is a TrainConfig field or model_kwargs.<flag>; every spec is choices or low/high."""
    if not space:
        raise ValueError("the sweep's search space is empty; give --space NAME=SPEC (e.g. lr=1e-4:3e-3:log)")
    valid = [f for f in field_names() if f not in ("model_kwargs", "out_dir", "results_dir", "device", "seed")]
    for name, spec in space.items():
        if not (name in valid or name.startswith("model_kwargs.") and len(name) > len("model_kwargs.")):
            raise ValueError(f"unknown sweep parameter {name!r}; valid choices: {', '.join(valid)}, model_kwargs.<flag>")
        if not isinstance(spec, dict) or not ("choices" in spec or {"low", "high"} <= set(spec)):
            raise ValueError(f"sweep parameter {name!r}: give {{choices = [...]}} or {{low, high[, log, step]}}, got {spec!r}")


def suggest(trial: optuna.Trial, space: dict) -> dict:
    """The trial's value for every parameter of the space."""
    out = {}
    for name, spec in space.items():
        if "choices" in spec:
            out[name] = trial.suggest_categorical(name, list(spec["choices"]))
        elif all(isinstance(spec[b], int) and not isinstance(spec[b], bool) for b in ("low", "high")):
            out[name] = trial.suggest_int(name, spec["low"], spec["high"], step=spec.get("step", 1), log=spec.get("log", False))
        else:
            out[name] = trial.suggest_float(name, float(spec["low"]), float(spec["high"]), step=spec.get("step"),
                                            log=spec.get("log", False))
    return out


def apply_params(cfg: TrainConfig, params: dict) -> TrainConfig:
    """A copy of `cfg` with the trial's values: fields replaced, `model_kwargs.<flag>` merged."""
    fields = {k: v for k, v in params.items() if not k.startswith("model_kwargs.")}
    flags = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("model_kwargs.")}
    d = {**cfg.to_dict(), **fields, "model_kwargs": {**cfg.model_kwargs, **flags}}
    return TrainConfig.from_dict(d)


def parse_space_option(items: list[str]) -> dict:
    """['lr=1e-4:3e-3:log', 'ema_decay=0.99,0.999', 'warmup_steps=0:500', 'model_kwargs.d_state=8,16']
    -> a space dict. LOW:HIGH[:log] is a range (ints give an integer range); A,B,... are choices."""
    space = {}
    for item in items:
        name, sep, spec = item.partition("=")
        if not sep:
            raise ValueError(f"--space expects NAME=LOW:HIGH[:log] or NAME=A,B,..., got {item!r}")

        def value(text: str):
            return parse_set([f"v={text}"])["v"]

        if ":" in spec:
            parts = spec.split(":")
            if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
                raise ValueError(f"--space {name}: a range is LOW:HIGH or LOW:HIGH:log, got {spec!r}")
            space[name.strip()] = {"low": value(parts[0]), "high": value(parts[1]), "log": len(parts) == 3}
        else:
            space[name.strip()] = {"choices": [value(v) for v in spec.split(",") if v]}
    return space


__all__ = ["PRUNERS", "SAMPLERS", "apply_params", "check_space", "make_pruner", "make_sampler", "parse_space_option",
           "suggest"]
