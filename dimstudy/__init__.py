"""dimstudy: take Diffusion Mamba (DiM, Teng et al. 2024) apart and measure it against its peers."""

__version__ = "0.1.0"
