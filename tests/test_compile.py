"""torch.compile of a network whole or block by block (dimstudy.models.compile), on CPU with Dynamo's eager
backend: what gets compiled, and that nothing else changes."""

import pytest
import torch
import torch.nn as nn

from dimstudy.models.compile import compile_network, repeated_blocks
from dimstudy.models.registry import create_model


@pytest.mark.parametrize("name,lists", [("dim_tiny_2", ("blocks",)), ("uvit_tiny_2", ("in_blocks", "out_blocks"))])
def test_repeated_blocks_are_the_items_of_the_outermost_module_lists(name, lists):
    model = create_model(name)
    want = [blk for attr in lists for blk in getattr(model, attr)]
    assert [id(b) for b in repeated_blocks(model)] == [id(b) for b in want] and len(want) >= 4


def test_blocks_scope_compiles_each_block_in_place_and_changes_nothing_else():
    torch.manual_seed(0)
    model = create_model("dim_tiny_2", scan_backend="torch").eval()
    x, t = torch.randn(2, model.in_chans, model.img_size, model.img_size), torch.full((2,), 10.0)
    with torch.no_grad():
        before = model(x, t)
    keys = list(model.state_dict())
    net = compile_network(model, "blocks", backend="eager")
    assert net is model and list(net.state_dict()) == keys  # no _orig_mod. prefix: checkpoints load as they were
    compiled = {name for name, m in model.named_modules() if getattr(m, "_compiled_call_impl", None) is not None}
    assert compiled == {f"blocks.{i}" for i in range(len(model.blocks))}
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), before, rtol=1e-5, atol=1e-6)


def test_bad_scopes_and_models_without_blocks_are_one_line_errors():
    with pytest.raises(ValueError, match="unknown compile scope 'layers'; valid choices: model, blocks"):
        compile_network(nn.Linear(2, 2), "layers")
    with pytest.raises(ValueError, match="Linear has no repeated blocks"):
        compile_network(nn.Linear(2, 2), "blocks")


def test_a_dim_block_on_the_pytorch_scan_traces_whole_and_matches_eager():
    """torch.compile(fullgraph=True) of a DiM decoder block on the CPU's chunked PyTorch scan: no graph break
    (its sums once wrote through out= into strided views, which Dynamo refuses), same output and gradients; and a
    second length, which Dynamo traces with symbolic sizes, compiles too (its chunk size once took l / 4 of a
    symbolic l, which failed inside Dynamo). Dynamo's eager backend: the trace is what is tested."""
    torch.manual_seed(0)
    model = create_model("dim_tiny_2", scan_backend="torch")
    block = model.blocks[-1]
    assert block.skip_linear is not None
    compiled = torch.compile(block, fullgraph=True, backend="eager")
    for length in (40, 57):
        x = torch.randn(2, length, block.norm.weight.shape[0], requires_grad=True)
        mod, skip = torch.randn(2, 3, x.shape[-1]) * 0.1, torch.randn_like(x)
        y_c, y_e = compiled(x, mod, skip), block(x, mod, skip)
        torch.testing.assert_close(y_c, y_e)
        g_c, g_e = (torch.autograd.grad(y.square().sum(), [x, *block.parameters()]) for y in (y_c, y_e))
        for a, b in zip(g_c, g_e, strict=True):
            torch.testing.assert_close(a, b)
