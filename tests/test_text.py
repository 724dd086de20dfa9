"""Chapter 6's pieces: two-digit canvases and captions, the tokenizer, tau_theta, the null condition, attention maps."""

import pytest
import torch

from ldm_core.attention import capture_cross_attention
from ldm_core.conditioning import TextEncoder, Tokenizer, condition_dropout
from ldm_core.data import HELD_OUT_PAIRS, PAIRS, caption, load_mnist, random_captions, two_digit_canvases
from ldm_core.metrics import DigitClassifier, both_digits_correct
from ldm_core.pretrained import caption_tokenizer
from ldm_core.samplers import classifier_free_guidance
from ldm_core.unet import Denoiser, UNet, UNetConfig


def test_captions_name_both_digits_in_every_phrasing():
    assert caption(3, 7, 0) == "3 left of 7" and caption(3, 7, 1) == "7 right of 3"
    assert caption(3, 8, 3) == "an eight to the right of a three"
    assert caption(8, 1, 2) == "an eight to the left of a one"


def test_held_out_pairs_are_never_seen_and_every_digit_is_held_out_on_both_sides():
    assert not set(PAIRS["seen"]) & set(HELD_OUT_PAIRS) and len(PAIRS["seen"]) + len(HELD_OUT_PAIRS) == 100
    assert sorted(a for a, _ in HELD_OUT_PAIRS) == list(range(10)) == sorted(b for _, b in HELD_OUT_PAIRS)
    _, digits = two_digit_canvases("train", 2000, "seen", seed=1)
    assert not {tuple(p) for p in digits.tolist()} & set(HELD_OUT_PAIRS)


def test_canvases_put_real_digits_of_the_named_classes_side_by_side():
    x, digits = two_digit_canvases("test", 20, "held_out", seed=0)
    assert x.shape == (20, 1, 32, 64) and x.min() >= -1 and x.max() <= 1
    test_x, test_y = load_mnist("test")
    for canvas, (left, right) in zip(x, digits.tolist()):
        for half, label in [(canvas[:, :, :32], left), (canvas[:, :, 32:], right)]:
            match = (test_x == half).flatten(1).all(1)  # the half is one real test digit, of that class
            assert match.any() and (test_y[match] == label).all()
    assert torch.equal(two_digit_canvases("test", 20, "held_out", seed=0)[0], x)  # deterministic


def test_tokenizer_pads_and_rejects_unknown_words():
    tokenizer = caption_tokenizer(max_tokens=8)
    tokens = tokenizer(["3 left of 7", ""])
    assert tokens.shape == (2, 8) and tokens.dtype == torch.int64
    assert tokenizer.words(tokens[0])[:4] == ["3", "left", "of", "7"] and (tokens[0, 4:] == 0).all()
    assert (tokens[1] == 0).all()  # the empty caption is all padding: the null condition
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenizer(["3 above 7"])
    with pytest.raises(ValueError, match="max_tokens"):
        Tokenizer(["a"], max_tokens=2)(["a a a"])


def test_text_encoder_shapes_null_and_dropout():
    tokenizer = caption_tokenizer()
    encoder = TextEncoder(tokenizer, d_context=16, layers=2, heads=4)
    tokens = tokenizer([caption(a, b, 0) for a, b in [(1, 2), (3, 4), (5, 6)]])
    assert encoder(tokens).shape == (3, 8, 16)
    assert torch.equal(encoder.null(3), tokenizer([""] * 3))
    many = tokens.repeat(1000, 1)
    dropped = condition_dropout(many, encoder.null(len(many)), 0.1, torch.Generator().manual_seed(0))
    is_null = (dropped == encoder.null(1)).all(1)
    assert 0.09 < is_null.float().mean() < 0.11 and torch.equal(dropped[~is_null], many[~is_null])
    with pytest.raises(ValueError, match=r"int64 \(B, 8\)"):
        encoder(tokens[:, :4])


def test_text_encoder_starts_with_place_comparable_to_word():
    # CLIP's initialisation: a word's place moves its vector by about half as much as a change of word (with
    # nn.Embedding's std-1 default the same word at two places would be ~1% apart: a bag of words, chapter 6)
    torch.manual_seed(0)
    encoder = TextEncoder(caption_tokenizer(), d_context=128, layers=0)
    h = encoder(encoder.tokenizer(["3 3 7"]))[0]  # layers=0: the normalised sum of word and position embeddings
    place, word = (h[0] - h[1]).norm() / h[0].norm(), (h[0] - h[2]).norm() / h[0].norm()
    assert 0.3 < place < word < 3 * place


def test_the_null_condition_of_training_is_the_unconditional_branch_of_guidance():
    tokenizer = caption_tokenizer()
    model = Denoiser(UNet(UNetConfig.tiny(d_context=16)), TextEncoder(tokenizer, 16))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    z, t = torch.randn(2, 4, 8, 16), torch.tensor([300, 300])
    tokens = tokenizer(["3 left of 7", "a one to the left of a two"])
    dropped = condition_dropout(tokens, model.conditioner.null(2), 1.0)  # training with every caption dropped
    guided = classifier_free_guidance(model, 0.0, lambda B: model.conditioner.null(B))  # scale 0: unconditional
    torch.testing.assert_close(guided(z, t, tokens), model(z, t, dropped))


def test_capture_cross_attention_maps_sum_to_one_over_tokens_and_cleans_up():
    tokenizer = caption_tokenizer()
    model = Denoiser(UNet(UNetConfig.tiny(d_context=16)), TextEncoder(tokenizer, 16))
    z, t = torch.randn(2, 4, 8, 16), torch.tensor([10, 10])
    with capture_cross_attention(model) as maps:
        model(z, t, tokenizer(["3 left of 7", "7 then 3"]))
    assert maps and all(m.shape[0] == 2 and m.shape[-1] == 8 for m in maps)
    assert any(m.shape[2:4] == (4, 8) for m in maps)  # the lowest level of a (1, 2) UNet on 8x16 latents
    for m in maps:
        torch.testing.assert_close(m.sum(-1), torch.ones(m.shape[:-1]))
    assert all(not module.keep_weights for module in model.modules() if hasattr(module, "keep_weights"))


def test_random_captions_name_their_pairs():
    digits, captions = random_captions("held_out", 50, seed=3)
    assert {tuple(p) for p in digits.tolist()} <= set(HELD_OUT_PAIRS)
    for (a, b), text in zip(digits.tolist(), captions):
        assert text in {caption(a, b, p) for p in range(5)}
    assert random_captions("held_out", 50, seed=3)[1] == captions


def test_both_digits_correct_judges_each_half():
    x_test, y_test = load_mnist("test")

    class Oracle(DigitClassifier):  # looks the digit up among the test digits
        def forward(self, x):
            index = (x[:, None] == x_test[None]).flatten(2).all(2).float().argmax(1)
            return torch.nn.functional.one_hot(y_test[index], 10).float()

    x, digits = two_digit_canvases("test", 30, "seen", seed=0)
    assert both_digits_correct(Oracle(), x, digits) == 1.0
    wrong = digits.clone()
    wrong[:10, 1] = (wrong[:10, 1] + 1) % 10  # a third of the right halves mislabelled
    assert both_digits_correct(Oracle(), x, wrong) == pytest.approx(20 / 30)
    with pytest.raises(ValueError, match=r"\(N, 1, 32, 64\)"):
        both_digits_correct(Oracle(), x[..., :32], digits)
