"""Datasets (a registry of image sources in [-1, 1]) and the VAE latents pipeline."""

from dimstudy.data.datasets import (
    DATASETS,
    DatasetUnavailableError,
    ImageDataset,
    build_dataset,
    cache_root,
    float_to_uint8,
    list_datasets,
    save_pngs,
    uint8_to_float,
)
from dimstudy.data.latents import SD_VAE, SD_VAE_SCALE, decode_latents, encode_folder, load_vae

__all__ = [
    "DATASETS",
    "DatasetUnavailableError",
    "ImageDataset",
    "SD_VAE",
    "SD_VAE_SCALE",
    "build_dataset",
    "cache_root",
    "decode_latents",
    "encode_folder",
    "float_to_uint8",
    "list_datasets",
    "load_vae",
    "save_pngs",
    "uint8_to_float",
]
