"""Measuring speed: one timing protocol (`timing`), sweeps over models x resolutions x batch sizes
(`speed`, the paper's Fig. 3), the measured roofline floor (`roofline`) and where the time goes
(`profile`). Importing this package imports nothing heavy."""
