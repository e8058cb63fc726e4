"""The torch.func-transformable 4-bit path computes bitsandbytes' numbers, to the second derivative."""
import pytest
import torch

from metalearn import quant


@pytest.fixture(scope="module")
def layer():
    import bitsandbytes as bnb

    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 48, bias=True)
    q = bnb.nn.Linear4bit(64, 48, bias=True, compute_dtype=torch.float32, quant_type="nf4")
    q.load_state_dict(dense.state_dict())
    q = q.to("cpu")  # quantizes
    for p in q.parameters():
        p.requires_grad_(False)
    return q


def grads_to_second_order(module, x):
    """Output, d(sum y^2)/dx and the gradient of that gradient's norm (a second derivative)."""
    x = x.clone().requires_grad_(True)
    y = module(x)
    (g,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad((g * g).sum(), x)
    return y.detach(), g.detach(), gg


@pytest.mark.parametrize("cache", [True, False])  # F.linear on the cached weight / Linear4bitFn
def test_transformable_path_equals_bitsandbytes(layer, cache):
    assert quant.is_linear4bit(layer)
    x = torch.randn(2, 5, 64)
    reference = grads_to_second_order(layer, x)
    with quant.transformable_4bit(layer, cache=cache) as n:
        assert n == 1
        ours = grads_to_second_order(layer, x)
    assert "forward" not in vars(layer)  # restored
    for a, b in zip(reference, ours):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    if cache:  # the same ops as bitsandbytes' gemm_4bit (dequantize, then F.linear with the bias fused): bit for bit
        assert torch.equal(ours[0], reference[0])


@pytest.mark.parametrize("in_dims", [0, 1])
def test_uncached_path_vmaps_and_saves_no_dequantized_weight(layer, in_dims):
    xs = torch.randn(3, 4, 64, requires_grad=True)
    with quant.transformable_4bit(layer, cache=False):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
            y = torch.func.vmap(layer, in_dims=in_dims, out_dims=in_dims)(xs)
        (g,) = torch.autograd.grad((y * y).sum(), xs, create_graph=True)
        (gg,) = torch.autograd.grad(g.sum(), xs)
    assert (48, 64) not in saved and (64, 48) not in saved  # like QLoRA: the graph keeps the 4-bit weight only
    ref = layer(xs)  # bitsandbytes' own path, no vmap
    (ref_g,) = torch.autograd.grad((ref * ref).sum(), xs, create_graph=True)
    (ref_gg,) = torch.autograd.grad(ref_g.sum(), xs)
    for ours, theirs in ((y, ref), (g, ref_g), (gg, ref_gg)):
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-5)


def test_peft_lora_wrapper_is_not_mistaken_for_a_4bit_layer(layer):
    import peft

    model = torch.nn.Sequential()
    model.add_module("proj", layer)
    wrapped = peft.get_peft_model(model, peft.LoraConfig(r=2, target_modules=["proj"]))
    kinds = [type(m).__module__.split(".")[0] for m in wrapped.modules() if quant.is_linear4bit(m)]
    assert kinds == ["bitsandbytes"]
