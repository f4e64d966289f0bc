"""The denoiser under CUDA graphs: sampling a small network is bound by kernel launches on the host.

A sampler calls the network dozens of times per batch with the same shapes. `CudaGraphDenoiser` captures one
forward per input signature (shapes and dtypes of x, t, y) into a CUDA graph and then only replays it:
the inputs are copied into the graph's static buffers, the graph runs, and its output is cloned (the next
replay overwrites the static output, and multistep samplers keep the previous one). Capturing follows the
CUDA-graphs recipe: static inputs allocated before capture, a few warm-up forwards on a side stream (cuDNN /
cuBLAS workspaces, lazy kernel loads), then the capture on that side stream via `torch.cuda.graph`.

Each signature has its own graph and memory pool: the last, smaller batch of a sampling run and upsample
guidance's low-resolution call each get one. The sampler's own arithmetic and its noise draws stay outside
the graph, so graphed sampling draws the same random numbers as eager sampling. On the CPU, or with
`enabled=False`, `graphed` returns the network unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class CudaGraphDenoiser:
    """`model(x, t, y)` replayed from CUDA graphs; every other attribute is the wrapped network's."""

    def __init__(self, model: nn.Module, warmup: int = 3):
        self.model, self.warmup = model, warmup
        self.graphs: dict[tuple, tuple] = {}  # signature -> (graph, static x, t, y, static output)

    def __getattr__(self, name):  # img_size, in_chans, num_classes, parameters(), modules(), ...
        return getattr(self.__dict__["model"], name)

    @staticmethod
    def signature(x: Tensor, t: Tensor, y: Tensor | None) -> tuple:
        return tuple((tuple(v.shape), v.dtype, v.device) if v is not None else None for v in (x, t, y))

    @torch.no_grad()
    def __call__(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        key = self.signature(x, t, y)
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, t, y)
        graph, sx, st, sy, out = self.graphs[key]
        sx.copy_(x)
        st.copy_(t)
        if y is not None:
            sy.copy_(y)
        graph.replay()
        return out.clone()

    def _capture(self, x: Tensor, t: Tensor, y: Tensor | None) -> tuple:
        sx, st = x.clone(), t.clone()  # static inputs, outside the graph's pool
        sy = y.clone() if y is not None else None
        side = torch.cuda.Stream(device=x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.model(sx, st, sy)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.model(sx, st, sy)  # (B, C, H, W), rewritten by every replay
        return graph, sx, st, sy, out


def graphed(model, device: torch.device | str | None, enabled: bool = True):
    """The network under CUDA graphs when `enabled` and `device` is CUDA, else the network itself."""
    if not enabled or isinstance(model, CudaGraphDenoiser) or torch.device(device or "cpu").type != "cuda":
        return model
    return CudaGraphDenoiser(model)


__all__ = ["CudaGraphDenoiser", "graphed"]
