"""CUDA-graph sampling draws the same images as eager sampling (the graphs replay the same kernels)."""

import pytest
import torch

from dimstudy.diffusion import build_schedule
from dimstudy.diffusion.graphs import CudaGraphDenoiser, graphed
from dimstudy.diffusion.sampling import draw_samples
from dimstudy.models.registry import create_model
from dimstudy.ops import available_scan_backends, set_scan_backend

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
BACKENDS = ["torch", *(b for b in ("cuda", "triton") if available_scan_backends().get(b) is True)]


def _net(name: str, backend: str | None = None, **kw):
    torch.manual_seed(0)
    model = create_model(name, img_size=16, **kw).cuda().eval()
    if backend:
        set_scan_backend(model, backend)
    return model


def _both(model, **kw):
    """(eager, graphed) samples from the same seed, and the graphed wrapper (to count its graphs)."""
    eager = draw_samples(model, build_schedule("vpsde"), seed=3, device="cuda", cuda_graphs=False, **kw)
    wrapper = CudaGraphDenoiser(model)
    graphed_ = draw_samples(wrapper, build_schedule("vpsde"), seed=3, device="cuda", **kw)
    return eager, graphed_, wrapper


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sampler", ["dpm_solver", "euler_maruyama"])
def test_graphed_dim_samples_equal_eager_ones(backend, sampler):
    eager, graphed_, wrapper = _both(_net("dim_tiny_2", backend), n=10, batch_size=4, sampler=sampler, steps=6)
    torch.testing.assert_close(graphed_, eager, rtol=1e-4, atol=1e-4)
    assert len(wrapper.graphs) == 2  # one per batch shape: 4, and the last batch of 2


def test_graphed_upsample_guidance_and_class_conditional_cfg_equal_eager():
    model = _net("dim_tiny_2")
    eager, graphed_, wrapper = _both(model, n=4, batch_size=4, steps=6, img_size=32,
                                     upsample=dict(m=2, theta=1.0, eta=0.5))
    torch.testing.assert_close(graphed_, eager, rtol=1e-4, atol=1e-4)
    assert len(wrapper.graphs) == 2  # the 32 px call and the guidance's 16 px call
    cond = _net("uvit_tiny_2", num_classes=10)
    eager, graphed_, wrapper = _both(cond, n=6, batch_size=6, steps=5, cfg_scale=1.5)
    torch.testing.assert_close(graphed_, eager, rtol=1e-4, atol=1e-4)
    assert len(wrapper.graphs) == 1  # cond and uncond batched: one (12, ...) signature


def test_graphed_is_a_no_op_off_cuda_and_delegates_attributes():
    model = _net("dim_tiny_2")
    assert graphed(model, "cpu") is model and graphed(model, "cuda", enabled=False) is model
    g = graphed(model, "cuda")
    assert isinstance(g, CudaGraphDenoiser) and graphed(g, "cuda") is g
    assert (g.img_size, g.in_chans, next(g.parameters()).device.type) == (16, model.in_chans, "cuda")
