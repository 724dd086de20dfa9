"""Conditioners tau_theta: they turn a condition y into context tokens (B, M, d_context) for cross-attention.

Paper Eq. 3: the UNet attends to tau_theta(y). For class labels, tau_theta is a learned embedding and M = 1;
for text, a word-level :class:`Tokenizer` and a small transformer (:class:`TextEncoder`) give one token per word.

Every conditioner has the same interface: ``forward(y)`` -> (B, M, d_context); ``null(B)``, the null condition
("no condition"), the one object used both for condition dropout in training (:func:`condition_dropout`) and for
the unconditional branch of classifier-free guidance.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .attention import TransformerBlock
from .schedules import rng_device


def condition_dropout(cond: torch.Tensor, null: torch.Tensor, p: float,
                      generator: torch.Generator | None = None) -> torch.Tensor:
    """Condition dropout (Ho & Salimans 2022, Algorithm 1): each condition replaced by the null condition with
    probability p, so that one network learns the conditional and the unconditional model.

    Args:
        cond: conditions with the batch first, (B,) labels or (B, L) tokens.
        null: the null condition for the same batch, same shape (a conditioner's ``null(B)``).
        p: in [0, 1].
        generator: randomness of the choice, one uniform number per condition.

    Returns:
        a tensor like ``cond``.

    Raises:
        ValueError: if p is not in [0, 1] or the shapes differ.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"p must be in [0, 1], got {p}")
    if null.shape != cond.shape:
        raise ValueError(f"null must have the shape of cond {tuple(cond.shape)}, got {tuple(null.shape)}")
    B = cond.shape[0]
    keep = (torch.rand(B, generator=generator, device=rng_device(generator, cond.device)) >= p).to(cond.device)
    return torch.where(keep.view(B, *[1] * (cond.dim() - 1)), cond, null.to(cond.device))


class ClassEmbedder(nn.Module):
    """A class label as one context token: y (B,) int64 in [0, num_classes] -> (B, 1, d_context).

    The extra index ``null_label`` = ``num_classes`` is the null condition: "no label". Training replaces a
    fraction of labels by it (condition dropout), and classifier-free guidance uses it for the unconditional
    prediction (Ho & Salimans 2022), so the same learned token serves both.

    Raises:
        ValueError: if y is not a 1-D integer tensor of labels in [0, num_classes].
    """

    def __init__(self, num_classes: int, d_context: int):
        super().__init__()
        self.num_classes, self.d_context = num_classes, d_context
        self.null_label = num_classes
        self.embedding = nn.Embedding(num_classes + 1, d_context)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.dim() != 1 or y.dtype != torch.int64:
            raise ValueError(f"y must be int64 labels of shape (B,), got {y.dtype} {tuple(y.shape)}")
        if y.numel() and (y.min() < 0 or y.max() > self.null_label):
            raise ValueError(f"labels must lie in [0, {self.null_label}] ({self.null_label} = null), "
                             f"got [{int(y.min())}, {int(y.max())}]")
        return self.embedding(y).unsqueeze(1)  # (B, 1, d_context)

    def null(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The null condition's labels: (batch_size,) filled with ``null_label``."""
        return torch.full((batch_size,), self.null_label, dtype=torch.int64, device=device)


class Tokenizer:
    """A word-level tokenizer over a fixed vocabulary: lower-case, split on spaces, one id per word, padded.

    Id 0 is the padding token; the empty caption "" (all padding) is the null condition.

    Args:
        words: the vocabulary (every word a caption may use).
        max_tokens: L, the length of every token sequence.

    ``tokenizer(captions)``: a list of B strings -> int64 (B, L).

    Raises:
        TypeError: if captions is not a list (or tuple) of strings; one string is not a batch of captions.
        ValueError: for a word outside the vocabulary or a caption longer than L words.
    """

    PAD = "<pad>"

    def __init__(self, words, max_tokens: int = 8):
        self.vocabulary = [self.PAD, *sorted(set(words))]
        self.ids = {word: i for i, word in enumerate(self.vocabulary)}
        self.max_tokens = max_tokens

    def __len__(self) -> int:
        return len(self.vocabulary)

    def __call__(self, captions: list[str]) -> torch.Tensor:
        if not isinstance(captions, (list, tuple)) or not all(isinstance(text, str) for text in captions):
            raise TypeError(f"captions must be a list of strings (one caption each; wrap one caption as [text]), "
                            f"got {type(captions).__name__}: {str(captions)[:80]!r}")
        rows = []
        for text in captions:
            words = text.lower().split()
            unknown = [w for w in words if w not in self.ids]
            if unknown:
                raise ValueError(f"words {unknown} of {text!r} are not in the vocabulary {self.vocabulary[1:]}")
            if len(words) > self.max_tokens:
                raise ValueError(f"{text!r} has {len(words)} words; at most max_tokens={self.max_tokens}")
            rows.append([self.ids[w] for w in words] + [0] * (self.max_tokens - len(words)))
        return torch.tensor(rows, dtype=torch.int64).view(len(captions), self.max_tokens)

    def words(self, tokens: torch.Tensor) -> list[str]:
        """The words of one token sequence (L,), padding included: the labels of an attention map's columns."""
        return [self.vocabulary[int(i)] for i in tokens]


class TextEncoder(nn.Module):
    """tau_theta for text: token embedding + learned position embedding, then pre-LayerNorm transformer blocks
    (:class:`~ldm_core.attention.TransformerBlock`: self-attention, feed-forward, each residual; the UNet's
    SpatialTransformer uses the same block) and a final LayerNorm (Vaswani et al. 2017; the paper's text
    encoder is the same kind of transformer, larger). Trained jointly with the UNet (paper Eq. 3). The embeddings
    start as CLIP's (Radford et al. 2021): normal with std 0.02 for tokens, 0.01 for positions.

    Args:
        tokenizer: the :class:`Tokenizer` whose ids it embeds.
        d_context: width of the output tokens.
        layers: transformer blocks.
        heads: attention heads; must divide d_context.

    ``forward(tokens)``: int64 (B, L) ids -> (B, L, d_context), one context token per word (padding included).

    Raises:
        ValueError: if tokens are not int64 (B, L) with ids in the vocabulary.
    """

    def __init__(self, tokenizer: Tokenizer, d_context: int, layers: int = 2, heads: int = 4):
        super().__init__()
        self.tokenizer, self.d_context = tokenizer, d_context
        # CLIP's initialisation (Radford et al. 2021, openai/CLIP model.py): token std 0.02, position std 0.01, so
        # that a word's place is not drowned by which word it is (nn.Embedding's std 1 would outweigh it ~100 to 1)
        self.token_embedding = nn.Embedding(len(tokenizer), d_context)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.position_embedding = nn.Parameter(0.01 * torch.randn(tokenizer.max_tokens, d_context))
        self.blocks = nn.ModuleList(TransformerBlock(d_context, None, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d_context)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        L = self.tokenizer.max_tokens
        if tokens.dim() != 2 or tokens.dtype != torch.int64 or tokens.shape[1] != L:
            raise ValueError(f"tokens must be int64 (B, {L}), got {tokens.dtype} {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= len(self.tokenizer)):
            raise ValueError(f"token ids must lie in [0, {len(self.tokenizer) - 1}]")
        h = self.token_embedding(tokens) + self.position_embedding  # (B, L, d)
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def null(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The null condition: the empty caption's tokens (all padding), (batch_size, L)."""
        return self.tokenizer([""] * batch_size).to(device)

