"""torch.compile of a network, whole or block by block.

"model" is `torch.compile(model)`: one graph through the whole forward, the most room for fusion and the
longest compile (DiM-H/2: ~100 s a shape on an H200, results/speed-triton-compiled/). "blocks" compiles each
repeated block in place (every item of the network's outermost nn.ModuleLists: DiM's `blocks`, U-ViT's
`in_blocks` and `out_blocks`), which PyTorch calls regional compilation: blocks of one structure share their
compiled code, so 49 DiM blocks compile as a few graphs (with and without a long skip, with and without a
re-ordering), and what runs between blocks (embedding, pads, the head, U-ViT's mid block) stays eager.
"""

from __future__ import annotations

import torch
import torch.nn as nn

COMPILE_SCOPES = ("model", "blocks")


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The items of `model`'s outermost nn.ModuleLists (a list inside a block is part of that block)."""
    found, inside = [], []
    for name, module in model.named_modules():
        if any(name.startswith(prefix) for prefix in inside):
            continue
        if isinstance(module, nn.ModuleList):
            found += list(module)
            inside.append(f"{name}." if name else "")
    return found


def check_compile_scope(scope: str) -> str:
    """`scope` if it is one of COMPILE_SCOPES, else a one-line ValueError naming them."""
    if scope not in COMPILE_SCOPES:
        raise ValueError(f"unknown compile scope {scope!r}; valid choices: {', '.join(COMPILE_SCOPES)}")
    return scope


def compile_network(model: nn.Module, scope: str = "model", **compile_kwargs) -> nn.Module:
    """What to call: `torch.compile(model)` for scope "model"; for "blocks", `model` itself with each of its
    repeated blocks compiled in place (its state dict keys stay as they were). kwargs go to torch.compile."""
    if check_compile_scope(scope) == "model":
        return torch.compile(model, **compile_kwargs)
    blocks = repeated_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no repeated blocks (nn.ModuleList) to compile one by one; "
                         "use compile scope 'model'")
    for block in blocks:
        block.compile(**compile_kwargs)
    return model
