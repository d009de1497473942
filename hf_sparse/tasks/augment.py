"""Data augmentation for distillation: TinyBERT's word replacement, with the model's own input embeddings.

Each training text gets `copies` variants in which every eligible word (alphabetic, a single word piece of the
vocabulary) is, with probability `probability`, replaced by one of its `neighbours` nearest words in the model's
input-embedding space (cosine). TinyBERT (Jiao et al. 2020) draws the candidates from BERT's MLM and GloVe;
MiniLM-L6 has no MLM head, and its input embeddings put synonyms near each other, but antonyms too
(`good` -> `bad`): so the labels of the new texts come from the teacher (`teacher_labels`), never from the original.
"""

from __future__ import annotations

import random
import re
from typing import Mapping, Optional, Sequence

import torch
from datasets import Dataset

_WORD = re.compile(r"[A-Za-z]+")


def embedding_neighbours(embeddings: torch.Tensor, tokenizer, k: int = 15, chunk: int = 4096) -> dict[str, tuple[str, ...]]:
    """The `k` nearest eligible words (cosine of the rows of `embeddings`, [vocab, hidden]) of every eligible word
    of `tokenizer`'s vocabulary: ASCII alphabetic tokens of two or more characters (no continuation pieces, no
    special tokens). Rows past the tokenizer's vocabulary (padding of the embedding matrix) are ignored."""
    vocab = tokenizer.convert_ids_to_tokens(list(range(min(embeddings.shape[0], len(tokenizer)))))
    eligible = [i for i, token in enumerate(vocab) if token and len(token) > 1 and token.isascii() and token.isalpha()]
    if len(eligible) <= k:
        raise ValueError(f"the vocabulary has {len(eligible)} eligible words: too few for {k} neighbours each")
    ids = torch.tensor(eligible)
    vectors = torch.nn.functional.normalize(embeddings.detach().float()[ids], dim=-1)
    neighbours: dict[str, tuple[str, ...]] = {}
    for start in range(0, len(eligible), chunk):
        similarity = vectors[start : start + chunk] @ vectors.T
        rows = torch.arange(similarity.shape[0])
        similarity[rows, rows + start] = float("-inf")  # a word is not its own neighbour
        top = similarity.topk(k, dim=-1).indices
        for row, candidates in zip(range(start, start + similarity.shape[0]), top.tolist()):
            neighbours[vocab[eligible[row]]] = tuple(vocab[eligible[c]] for c in candidates)
    return neighbours


def augment_text(text: str, neighbours: Mapping[str, Sequence[str]], probability: float, rng: random.Random) -> str:
    """`text` with each word found in `neighbours` (case-insensitively) replaced, with `probability`, by one of its
    neighbours drawn uniformly; a capitalised word gets a capitalised replacement. Everything else is kept as is."""

    def replace(match: re.Match) -> str:
        word = match.group(0)
        candidates = neighbours.get(word.lower())
        if not candidates or rng.random() >= probability:
            return word
        new = rng.choice(candidates)
        return new.capitalize() if word[0].isupper() else new

    return _WORD.sub(replace, text)


def augment_dataset(
    dataset: Dataset, text_columns: Sequence[str], neighbours: Mapping[str, Sequence[str]], copies: int,
    probability: float = 0.4, seed: int = 0,
) -> Dataset:
    """Up to `copies` augmented variants of every row of `dataset` (the `text_columns` rewritten by
    `augment_text`; other columns copied). A variant identical to its original, or to an earlier variant of it, is
    dropped, so the result can hold fewer than `copies` x rows. Deterministic for a given `seed`."""
    if copies < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    if not 0 < probability <= 1:
        raise ValueError(f"probability must be in (0, 1], got {probability}")
    missing = [c for c in text_columns if c not in dataset.column_names]
    if missing:
        raise ValueError(f"text columns {missing} are not in the dataset (columns: {dataset.column_names})")
    rng = random.Random(seed)
    rows: dict[str, list] = {c: [] for c in dataset.column_names}
    for example in dataset:
        seen = {tuple(example[c] for c in text_columns)}
        for _ in range(copies):
            texts = tuple(augment_text(example[c], neighbours, probability, rng) if example[c] is not None else None for c in text_columns)
            if texts in seen:
                continue
            seen.add(texts)
            for column in dataset.column_names:
                rows[column].append(texts[text_columns.index(column)] if column in text_columns else example[column])
    return Dataset.from_dict(rows, features=dataset.features)


@torch.no_grad()
def teacher_labels(
    teacher, tokenizer, texts: Sequence[str], pairs: Optional[Sequence[str]], max_length: int, regression: bool,
    batch_size: int = 128,
) -> list:
    """The teacher's labels for `texts` (and `pairs`): the arg-max class, or the predicted score for a regression
    head. Batches are sorted by length (less padding); the order of the result is that of `texts`."""
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
    was_training = teacher.training
    teacher.eval()
    lengths = [len(t) + (len(pairs[i]) if pairs is not None else 0) for i, t in enumerate(texts)]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    labels: list = [None] * len(texts)
    device = next(teacher.parameters()).device
    for start in range(0, len(order), batch_size):
        batch = order[start : start + batch_size]
        encoded = tokenizer(
            [texts[i] for i in batch], [pairs[i] for i in batch] if pairs is not None else None,
            truncation=True, max_length=max_length, padding=True, return_tensors="pt",
        ).to(device)
        logits = teacher(**encoded).logits.float()
        values = logits.squeeze(-1).tolist() if regression else logits.argmax(-1).tolist()
        for i, value in zip(batch, values):
            labels[i] = value
    teacher.train(was_training)
    return labels
