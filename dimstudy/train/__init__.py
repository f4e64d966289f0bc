"""Training: one config dataclass, a trainer that resumes exactly, atomic checkpoints, EMA, DDP."""

from dimstudy.train.checkpoint import load_checkpoint, read_checkpoint
from dimstudy.train.config import TrainConfig, load_config, save_config
from dimstudy.train.ema import EMA
from dimstudy.train.files import save_checkpoint
from dimstudy.train.trainer import train

__all__ = [
    "EMA",
    "TrainConfig",
    "load_checkpoint",
    "load_config",
    "read_checkpoint",
    "save_checkpoint",
    "save_config",
    "train",
]
