"""Word-replacement augmentation (`hf_sparse.tasks.augment`) and its use by `hf-sparse finetune --augment_copies`."""

import itertools
import json
import random

import pytest
import torch
from datasets import Dataset

from conftest import build
from hf_sparse.cli import main
from hf_sparse.tasks.augment import augment_dataset, augment_text, embedding_neighbours, teacher_labels

WORDS = ["".join(letters) for letters in itertools.product("abcdefghij", "klmnopqrst")][:94]  # 94 alphabetic words


@pytest.fixture
def alpha_tokenizer(tmp_path):
    from transformers import BertTokenizerFast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS) + "\n")
    return BertTokenizerFast(str(vocab))


def test_neighbours_are_the_nearest_eligible_words_by_cosine(tmp_path):
    from transformers import BertTokenizerFast

    tokens = ["[PAD]", "[UNK]", "good", "great", "bad", "##ish", "x", "7", "café", "fine", "awful"]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(tokens) + "\n")
    tokenizer = BertTokenizerFast(str(vocab))
    rows = {"good": [1, 0.1], "great": [1, 0.2], "fine": [1, -0.5], "bad": [-1, 0.1], "awful": [-1, 0.3]}
    # non-eligible tokens sit exactly on top of "good": they must never be proposed
    embeddings = torch.tensor([rows.get(t, [1.0, 0.1]) for t in tokens]) * torch.arange(1, len(tokens) + 1)[:, None]  # norms differ
    neighbours = embedding_neighbours(embeddings, tokenizer, k=2, chunk=2)
    assert set(neighbours) == set(rows)  # no [PAD], ##ish, x, 7 or café
    assert neighbours["good"] == ("great", "fine")
    assert neighbours["bad"] == ("awful", "fine")
    assert all(word not in neighbours[word] for word in neighbours)
    padded = torch.cat([embeddings, torch.ones(3, 2)])  # rows past the vocabulary (a padded embedding matrix)
    assert embedding_neighbours(padded, tokenizer, k=2) == neighbours
    with pytest.raises(ValueError, match="5 eligible words: too few for 5 neighbours"):
        embedding_neighbours(embeddings, tokenizer, k=5)


def test_augment_text_replaces_only_known_words_and_keeps_case():
    neighbours = {"good": ("great",), "film": ("movie",)}
    rng = random.Random(0)
    assert augment_text("Good film , good-ish FILM 's 42 films", neighbours, 1.0, rng) == "Great movie , great-ish Movie 's 42 films"
    assert augment_text("a good film", neighbours, 1e-9, rng) == "a good film"
    first = [augment_text("good film " * 20, {"good": ("a", "b"), "film": ("c", "d")}, 0.5, random.Random(s)) for s in (1, 1, 2)]
    assert first[0] == first[1] != first[2]  # deterministic for a seed
    words = first[0].split()
    assert 0 < sum(w in ("good", "film") for w in words) < len(words)  # some kept, some replaced


def test_augment_dataset_drops_unchanged_variants_and_copies_other_columns():
    data = Dataset.from_dict({"text_a": ["good film", "zzz", "good"], "text_b": ["film", "zzz", "qq"], "label": [1, 0, 1], "idx": [0, 1, 2]})
    neighbours = {"good": ("great", "fine"), "film": ("movie", "show")}
    out = augment_dataset(data, ["text_a", "text_b"], neighbours, copies=3, probability=1.0, seed=0)
    assert out.features == data.features
    assert "zzz" not in out["text_a"]  # nothing to replace: no variant
    assert len(set(zip(out["text_a"], out["text_b"]))) == len(out)  # no duplicate variant
    for row in out:
        original = data[row["idx"]]
        assert (row["text_a"], row["text_b"]) != (original["text_a"], original["text_b"]) and row["label"] == original["label"]
        assert len(row["text_a"].split()) == len(original["text_a"].split())
    assert 1 <= sum(i == 2 for i in out["idx"]) <= 2  # "good" has two neighbours: at most two distinct variants
    with pytest.raises(ValueError, match="copies must be >= 1"):
        augment_dataset(data, ["text_a"], neighbours, copies=0)
    with pytest.raises(ValueError, match="probability must be in"):
        augment_dataset(data, ["text_a"], neighbours, copies=1, probability=0)
    with pytest.raises(ValueError, match=r"text columns \['sentence'\] are not in the dataset"):
        augment_dataset(data, ["sentence"], neighbours, copies=1)


@pytest.mark.parametrize("regression", [False, True])
def test_teacher_labels_match_one_by_one_predictions(alpha_tokenizer, regression):
    teacher = build("SparseBertForSequenceClassification", sparsity=0.0, num_labels=1 if regression else 3)
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 12))) for _ in range(23)]
    pairs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 5))) for _ in range(23)]

    def one_by_one():
        with torch.no_grad():
            return torch.stack([
                teacher(**alpha_tokenizer(text, pair, truncation=True, max_length=16, return_tensors="pt")).logits[0]
                for text, pair in zip(texts, pairs)
            ])

    with torch.no_grad():  # a random model's logits share a large common part: centre them so the classes vary
        teacher.classifier.bias.sub_(one_by_one().mean(0))
    expected = one_by_one()
    labels = teacher_labels(teacher, alpha_tokenizer, texts, pairs, max_length=16, regression=regression, batch_size=4)
    if regression:
        assert labels == pytest.approx(expected[:, 0].tolist(), abs=1e-4)
    else:
        assert labels == expected.argmax(-1).tolist()
    if not regression:
        assert len(set(labels)) > 1  # not a constant: the comparison above means something
    with pytest.raises(ValueError, match="23 texts but 2 pairs"):
        teacher_labels(teacher, alpha_tokenizer, texts, pairs[:2], max_length=16, regression=regression)


def test_finetune_with_augmentation_trains_on_teacher_labelled_variants(alpha_tokenizer, tmp_path):
    rng = random.Random(0)
    sst2 = tmp_path / "data" / "glue" / "SST-2"
    sst2.mkdir(parents=True)
    for split, n in (("train", 20), ("dev", 6)):
        rows = ["sentence\tlabel"] + [f"{' '.join(rng.choice(WORDS) for _ in range(6))}\t{i % 2}" for i in range(n)]
        (sst2 / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    dense = build("SparseBertForSequenceClassification", sparsity=0.0, num_labels=2, max_position_embeddings=128).to_dense()
    dense.save_pretrained(tmp_path / "dense")
    alpha_tokenizer.save_pretrained(tmp_path / "dense")
    common = ["--data_dir", str(tmp_path / "data"), "--per_device_train_batch_size", "4", "--num_train_epochs", "1", "--report_to", "none",
              "--save_strategy", "no", "--use_cpu", "true", "--disable_tqdm", "true", "--task", "sst2", "--model", str(tmp_path / "dense")]
    assert main(["finetune", *common, "--output_dir", str(tmp_path / "aug"), "--teacher", str(tmp_path / "dense"), "--augment_copies", "2"]) == 0
    results = json.loads((tmp_path / "aug" / "results.json").read_text())
    assert results["train_examples"] == 20 and 20 < results["augmented_examples"] <= 40
    assert results["train_features"] == 20 + results["augmented_examples"]
    assert results["steps"] == -(-results["train_features"] // 4)  # the variants are trained on
    assert results["mode"] == "dense+kd+augmented-x2"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--augment_copies", "1"], "augment_copies needs --teacher"),
        (["--augment_copies", "-1"], "augment_copies must be >= 0"),
        (["--augment_copies", "1", "--teacher", "x", "--augment_probability", "1.5"], "augment_probability must be in (0, 1]"),
        (["--augment_copies", "1", "--teacher", "x", "--augment_neighbours", "0"], "augment_neighbours must be >= 1"),
    ],
)
def test_augmentation_argument_errors(tmp_path, capsys, extra, message):
    argv = ["finetune", "--model", str(tmp_path), "--task", "sst2", "--output_dir", str(tmp_path / "e"), *extra]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_augmentation_is_for_glue_cross_encoders(tmp_path, capsys):
    for extra in (["--task", "squad"], ["--task", "stsb", "--head", "bi-encoder"]):
        argv = ["finetune", "--model", str(tmp_path), "--output_dir", str(tmp_path / "e"), "--teacher", "x", "--augment_copies", "1", *extra]
        assert main(argv) == 2
        assert "augment_copies applies to GLUE tasks with the cross-encoder head" in capsys.readouterr().err
