import math

import pytest
import torch
import torch.nn.functional as F

from ldm_core.attention import Attention, SpatialTransformer, position_encoding_2d


def reference(attention: Attention, x, context):
    """The same projections through PyTorch's fused scaled_dot_product_attention."""
    B, N, D = x.shape
    heads, d = attention.heads, attention.d_head
    split = lambda t: t.view(B, -1, heads, d).transpose(1, 2)  # noqa: E731  (B, heads, L, d)
    out = F.scaled_dot_product_attention(split(attention.to_q(x)), split(attention.to_k(context)),
                                         split(attention.to_v(context)))
    return attention.to_out(out.transpose(1, 2).reshape(B, N, D))


@pytest.mark.parametrize("d_context", [None, 12])
def test_attention_equals_pytorch_reference(d_context):
    attention = Attention(16, d_context, heads=4).double()
    x = torch.randn(3, 10, 16, dtype=torch.float64)
    context = x if d_context is None else torch.randn(3, 5, d_context, dtype=torch.float64)
    torch.testing.assert_close(attention(x, None if d_context is None else context), reference(attention, x, context))


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
