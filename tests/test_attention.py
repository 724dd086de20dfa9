import contextlib
import math

import pytest
import torch

from ldm_core import attention as attention_module
from ldm_core.attention import Attention, explicit_attention, SpatialTransformer, position_encoding_2d


def reference(attention: Attention, x, context):
    """The same projections, with the attention of every head written out as sums (Vaswani et al. 2017, Eq. 1)."""
    B, N, D = x.shape
    heads, d = attention.heads, attention.d_head
    split = lambda t: t.view(B, -1, heads, d)  # noqa: E731  (B, L, heads, d)
    q, k, v = split(attention.to_q(x)), split(attention.to_k(context)), split(attention.to_v(context))
    weights = torch.einsum("bnhd,bmhd->bhnm", q, k).div(math.sqrt(d)).softmax(-1)
    return attention.to_out(torch.einsum("bhnm,bmhd->bnhd", weights, v).reshape(B, N, D))


@pytest.mark.parametrize("explicit", [True, False])
@pytest.mark.parametrize("d_context", [None, 12])
def test_attention_equals_the_written_out_reference_on_both_paths(d_context, explicit, monkeypatch):
    """As written (explicit_attention, whenever weights are kept, and below FUSED_MIN_PAIRS) and through torch's
    fused kernel (here for every size): the same outputs and the same gradients."""
    monkeypatch.setattr(attention_module, "FUSED_MIN_PAIRS", 0)
    attention = Attention(16, d_context, heads=4).double()
    x = torch.randn(3, 10, 16, dtype=torch.float64, requires_grad=True)
    context = x if d_context is None else torch.randn(3, 5, d_context, dtype=torch.float64)
    with explicit_attention() if explicit else contextlib.nullcontext():
        out = attention(x, None if d_context is None else context)
    expected = reference(attention, x, context)
    torch.testing.assert_close(out, expected)
    probe = torch.randn_like(out)
    grad, = torch.autograd.grad((out * probe).sum(), x)
    expected_grad, = torch.autograd.grad((expected * probe).sum(), x)
    torch.testing.assert_close(grad, expected_grad)


def test_the_fused_path_is_deterministic_and_agrees_in_float32():
    attention = Attention(64, None, heads=4)
    x = torch.randn(8, 256, 64)  # the pixel UNet's 16x16 tokens, where the fused kernel is used for speed
    assert 256 * 256 >= attention_module.FUSED_MIN_PAIRS > 16 * 16, "fused there, written out at the latent's 4x4"
    first, second = attention(x), attention(x)
    assert torch.equal(first, second)
    torch.testing.assert_close(first, reference(attention, x, x), rtol=1e-4, atol=1e-5)


def test_flops_are_counted_as_written_whichever_path_runs(monkeypatch):
    """torch's FLOP counter does not see the fused kernel on a CPU; training_flops counts attention as written:
    forward Q K^T and (weights) V, 2 N M d each, and their backward twice that, per head and example."""
    from ldm_core.train import training_flops

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attention = Attention(8, None, heads=2)

        def forward(self, z, t, cond):  # z (1, 1, 16, 8): 16 tokens of width 8
            return self.attention(z[:, 0]).unsqueeze(1)

    monkeypatch.setattr(attention_module, "FUSED_MIN_PAIRS", 0)  # the fused kernel even for 16 tokens
    model, z0 = Model(), torch.randn(1, 1, 16, 8)
    N, d, heads, width = 16, 4, 2, 8
    # q, k, v: forward and weight gradient (their input, the data, needs none); out: forward and both gradients
    projections = 2 * (2 * N * width * width) * 3 + 3 * (2 * N * width * width)
    products = 3 * (2 * N * N * d) * 2 * heads  # forward and the two gradients of Q K^T and of (weights) V
    assert training_flops(model, z0) == projections + products
    with explicit_attention():
        assert training_flops(model, z0) == projections + products


def test_attention_weights_rows_sum_to_one():
    attention = Attention(8, 6, heads=2)
    attention.keep_weights = True
    attention(torch.randn(2, 7, 8), torch.randn(2, 3, 6))
    weights = attention.last_weights
    assert weights.shape == (2, 2, 7, 3)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 7))


def test_single_context_token_gives_every_query_the_same_output():
    attention = Attention(8, 6, heads=2)
    out = attention(torch.randn(2, 9, 8), torch.randn(2, 1, 6))
    torch.testing.assert_close(out, out[:, :1].expand_as(out))


def test_errors_name_the_expected_shape():
    attention = Attention(8, 6, heads=2)
    with pytest.raises(ValueError, match=r"context must be \(2, M, 6\), got \(2, 1, 5\)"):
        attention(torch.randn(2, 9, 8), torch.randn(2, 1, 5))
    with pytest.raises(ValueError, match="divisible by heads"):
        Attention(10, heads=4)
    with pytest.raises(ValueError, match="groups=3 must divide channels=8"):
        SpatialTransformer(8, None, 2, groups=3)


def test_spatial_transformer_starts_as_identity_and_keeps_shape():
    block = SpatialTransformer(8, 6, heads=2, groups=4)
    x = torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(block(x, torch.randn(2, 3, 6)), x)  # proj_out is zero-initialised
    with pytest.raises(ValueError, match=r"expects context \(B, M, 6\)"):
        block(x)


def test_position_encoding_2d_closed_form_and_distinct_positions():
    encoding = position_encoding_2d(3, 5, 8)  # (15, 8): [cos, sin] of the row, then of the column
    assert encoding.shape == (15, 8) and encoding.abs().max() <= 1
    row, column = 2, 4
    expected = [math.cos(row), math.cos(row / 100), math.sin(row), math.sin(row / 100),
                math.cos(column), math.cos(column / 100), math.sin(column), math.sin(column / 100)]
    torch.testing.assert_close(encoding[row * 5 + column], torch.tensor(expected))
    assert len({tuple(e.tolist()) for e in encoding}) == 15  # every position is told apart
    with pytest.raises(ValueError, match="divisible by 4"):
        position_encoding_2d(2, 2, 6)
