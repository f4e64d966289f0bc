"""TrainConfig: the paper's defaults, TOML round trip, error texts, override order."""


import pytest

from dimstudy.presets import TRAIN_PRESETS
from dimstudy.train.config import TrainConfig, field_names, load_config, save_config

SMOKE = TRAIN_PRESETS / "smoke.toml"


def test_defaults_are_the_papers_cifar10_settings():
    c = TrainConfig()
    assert (c.model, c.dataset, c.resolution, c.schedule) == ("dim_s_2", "cifar10", 32, "vpsde")
    assert (c.lr, c.weight_decay, c.betas, c.eps) == (2e-4, 0.03, (0.99, 0.999), 1e-8)
    assert (c.warmup_steps, c.ema_decay, c.batch_size, c.steps) == (2500, 0.9999, 128, 500_000)
    assert (c.grad_clip, c.grad_accum, c.hflip, c.p_uncond, c.seed) == (0.0, 1, True, 0.0, 0)
    assert TrainConfig(class_cond=True).p_uncond == 0.1  # label dropout only where there are labels
    assert TrainConfig(class_cond=True, p_uncond=0.15).p_uncond == 0.15


def test_toml_round_trip(tmp_path):
    cfg = TrainConfig(model="dim_tiny_2", lr=1e-3, betas=(0.9, 0.99), steps=7, data_dir=None,
                      model_kwargs={"long_skip": False, "scan_patterns": "12"}, results_dir="res")
    path = save_config(cfg, tmp_path / "c.toml")
    assert "[model_kwargs]" in path.read_text()
    assert load_config(path) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_unknown_key_names_the_valid_keys(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('modle = "dim_tiny_2"\n')
    with pytest.raises(ValueError, match=r"unknown config key 'modle'; valid keys: model, model_kwargs, dataset"):
        load_config(path)
    with pytest.raises(ValueError, match="unknown config key 'nope'"):
        TrainConfig.from_dict({}, nope=1)


def test_bad_values_are_rejected_with_the_field_name():
    with pytest.raises(ValueError, match="config key 'lr' expects float, got 'fast'"):
        TrainConfig(lr="fast")
    with pytest.raises(ValueError, match="config key 'steps' expects int"):
        TrainConfig(steps=True)
    with pytest.raises(ValueError, match="unknown precision 'fp8'; valid choices: auto, bf16, fp16, fp32"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="not divisible by grad_accum"):
        TrainConfig(batch_size=10, grad_accum=4)
    assert TrainConfig(lr=1).lr == 1.0 and isinstance(TrainConfig(lr=1).lr, float)  # TOML ints widen


def test_overrides_win_over_the_preset_and_none_keeps_it():
    base = load_config(SMOKE)
    cfg = load_config(SMOKE, steps=3, lr=None, model_kwargs={"scan_backend": "torch"})
    assert cfg.steps == 3 and cfg.lr == base.lr
    assert cfg.model_kwargs == {**base.model_kwargs, "scan_backend": "torch"}  # merged, not replaced


def test_smoke_preset_is_a_small_cpu_run_on_embedded_data():
    cfg = load_config(SMOKE)
    assert cfg.dataset == "digits" and cfg.model == "dim_tiny_2" and cfg.device == "cpu"
    assert cfg.steps <= 500 and cfg.warmup_steps < cfg.steps and cfg.batch_size <= 64
    assert set(cfg.to_dict()) == set(field_names())
