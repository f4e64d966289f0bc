"""Noise schedules, samplers and guidance (CFG, upsample guidance) for dimstudy."""

from .guidance import UpsampleGuidance, cfg_eps, drop_labels, guidance_weight, power_calibration, upsample_tau
from .samplers import GRIDS, SAMPLERS, sample, time_grid
from .schedules import SCHEDULES, VPSDE, DiscreteDDPM, NoiseSchedule, append_dims, build_schedule

__all__ = [
    "GRIDS",
    "SAMPLERS",
    "SCHEDULES",
    "DiscreteDDPM",
    "NoiseSchedule",
    "UpsampleGuidance",
    "VPSDE",
    "append_dims",
    "build_schedule",
    "cfg_eps",
    "drop_labels",
    "guidance_weight",
    "power_calibration",
    "sample",
    "time_grid",
    "upsample_tau",
]
