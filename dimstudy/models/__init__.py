"""Architectures: importing this package registers every size preset."""

from dimstudy.models.dim import DiM, DiMBlock
from dimstudy.models.uvit import UViT

__all__ = ["DiM", "DiMBlock", "UViT"]
