"""Architectures, their registry and DiM's component table.

- `dim`         DiM (and the plain Mamba baseline): one file, embedders, block, head, model, size presets.
- `uvit`        U-ViT, the transformer DiM is measured against.
- `layers`      the pieces both share: patch and timestep embedding, RMSNorm, the head's unpatchify.
- `scans`       DiM's scan patterns (Sec. 3.2, Fig. 2).
- `registry`    `@register_model` presets, `create_model(name, **overrides)`, `list_models`.
- `components`  the CLI names of DiM's four designs and the constructor flags that switch them.

Importing the package imports no network (nor torch): the CLI builds its option choices from `components`,
and `dimstudy --help` stays torch-free. The registry imports the architectures when it is first asked.
"""
