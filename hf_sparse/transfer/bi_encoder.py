"""Bi-encoder sparse transfer with sentence-transformers (`hf-sparse finetune --head bi-encoder`).

Each sentence of a pair is encoded on its own and mean-pooled; the pair's score is the cosine of the
two vectors, trained with `CosineSimilarityLoss` on `SentenceTransformerTrainer`; with a teacher (a
fine-tuned dense bi-encoder), the MSE between the student's and the teacher's cosine is added (KD). This is how
MiniLM-L6 (all-MiniLM-L6-v2) was trained and is used, so it reads what an upstream run kept of the
sentence vectors, which a cross-encoder head (one [CLS] vector for the joined pair) does not.
The upstream pattern is locked as in the cross-encoder mode: `MaskedLinear` keeps pruned weights at
zero, `SparsityCallback` checks it and the final masks are compared with the upstream ones before
anything is written.

The saved folder is a sentence-transformers model; `SentenceTransformer(folder)` loads it (with
`import hf_sparse` for a sparse one).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
import transformers
from transformers import TrainingArguments

from ..models.sparse_bert.modeling_sparse_bert import _publish_directory
from ..tasks.glue import get_glue_task, load_glue
from ..tasks.metrics import glue_metrics
from .callback import MaskDriftError, SparsityCallback, mask_drift, reference_masks, unwrap_model

BI_ENCODER_TASKS = ("stsb",)  # similarity tasks: the label is a score between the two sentences
_STSB_MAX_SCORE = 5.0


def _sentence_transformers():
    try:
        import sentence_transformers
    except ImportError as error:  # an optional extra
        raise ImportError(
            "the bi-encoder head needs sentence-transformers: pip install 'hf-sparse[sentence]'"
        ) from error
    return sentence_transformers


def sentence_transformers_modules(folder: str | Path) -> list[dict]:
    """The modules a sentence-transformers folder lists in `modules.json`, checked: each `type` lies in the
    `sentence_transformers` namespace (sentence-transformers imports what a type names, and hf-sparse never
    imports code a file names) and each `path` is a folder inside `folder` (or empty: the folder itself).
    Returns `[]` when there is no `modules.json`. Raises `ValueError` naming the file and the entry."""
    modules_file = Path(folder) / "modules.json"
    if not modules_file.is_file():
        return []
    try:
        modules = json.loads(modules_file.read_text())
        entries = [(str(module["type"]), str(module.get("path", ""))) for module in modules]
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{modules_file}: not a sentence-transformers modules list ({err!r})") from None
    foreign = [t for t, _ in entries if not t.startswith("sentence_transformers.")]
    if foreign:
        raise ValueError(f"{modules_file}: modules outside sentence_transformers {foreign}; hf-sparse does not import code a model folder names")
    for _, path in entries:
        if path and (Path(path).is_absolute() or ".." in Path(path).parts or not (Path(folder) / path).is_dir()):
            raise ValueError(f"{modules_file}: module path {path!r} is not a folder inside {folder}")
    return modules


def build_bi_encoder(model_path: str, max_length: int, num_layers: int | None = None):
    """A `SentenceTransformer`: the checkpoint's encoder (sparse or plain BERT) + mean pooling.

    Returns `(model, sparse)`; `sparse` tells whether the encoder carries masks.
    """
    from .finetune import checked_config

    st = _sentence_transformers()
    config = checked_config(model_path, num_layers)
    config_kwargs = {"num_hidden_layers": num_layers} if num_layers else {}
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    encoder = Transformer(model_path, max_seq_length=max_length, config_kwargs=config_kwargs or None)
    pooling = Pooling(config.hidden_size, "mean")
    model = st.SentenceTransformer(modules=[encoder, pooling], device="cpu")
    return model, hasattr(unwrap_model(model), "masked_linears")


def sentence_pair_scores(model, first: list[str], second: list[str], batch_size: int = 64) -> torch.Tensor:
    """Cosine similarity of each pair's two sentence vectors."""
    a = model.encode(first, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    b = model.encode(second, batch_size=batch_size, convert_to_tensor=True, show_progress_bar=False)
    return torch.nn.functional.cosine_similarity(a.float(), b.float()).cpu()


def _pairs(dataset):
    from datasets import Dataset

    return Dataset.from_dict({
        "sentence1": list(dataset["text_a"]),
        "sentence2": list(dataset["text_b"]),
        "score": [float(x) / _STSB_MAX_SCORE for x in dataset["label"]],
    })


def sentence_training_arguments(training_args: TrainingArguments):
    """The same settings as a `SentenceTransformerTrainingArguments` (what `SentenceTransformerTrainer` takes)."""
    st = _sentence_transformers()
    values = {f.name: getattr(training_args, f.name) for f in dataclasses.fields(TrainingArguments) if f.init}
    return st.SentenceTransformerTrainingArguments(**values)


def run_bi_encoder_finetune(args, training_args: TrainingArguments) -> dict:
    """Fine-tunes a bi-encoder on `args.task` (stsb), evaluates on the full dev set, saves the model and
    `results.json` (the same fields as the cross-encoder run, plus `head`). Raises `MaskDriftError`
    (nothing is saved) when a locked pattern changed."""
    from .finetune import _subset, results_record, write_results

    if args.task not in BI_ENCODER_TASKS:
        raise ValueError(f"the bi-encoder head supports {', '.join(BI_ENCODER_TASKS)}, not {args.task!r}")
    st = _sentence_transformers()
    started = time.time()
    transformers.set_seed(training_args.seed)
    max_length = args.max_length or get_glue_task(args.task).max_length
    raw = load_glue(args.task, args.data_dir)
    train = _pairs(_subset(raw["train"], args.max_train_samples, training_args.seed, shuffle=True))
    dev = _pairs(_subset(raw["validation"], args.max_eval_samples, training_args.seed, shuffle=False))

    model, sparse = build_bi_encoder(args.model, max_length, args.num_layers)
    teacher = load_bi_encoder_teacher(args.teacher, model) if args.teacher else None
    upstream = reference_masks(model) if sparse else None
    trainer = st.SentenceTransformerTrainer(
        model=model,
        args=sentence_training_arguments(training_args),
        train_dataset=train,
        loss=_cosine_similarity_loss(model, teacher, args.task_weight, args.kd_weight),
        callbacks=[SparsityCallback(reference=upstream)] if sparse else [],
    )
    train_output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_seconds = time.time() - started

    eval_started = time.time()
    model.eval()
    with torch.no_grad():
        scores = sentence_pair_scores(model, list(dev["sentence1"]), list(dev["sentence2"]), training_args.per_device_eval_batch_size)
    metrics = {f"eval_{k}": v for k, v in glue_metrics(args.task, scores.numpy(), dev["score"]).items()}
    eval_seconds = time.time() - eval_started

    if upstream is not None:
        problems = mask_drift(model, upstream)
        if problems:
            raise MaskDriftError("sparsity pattern drifted: " + "; ".join(problems[:5]))
    results = results_record(
        args, training_args, trainer, train_output, metrics, unwrap_model(model) if sparse else None, model, upstream is not None,
        n_examples=len(train), n_features=len(train), max_length=max_length,
        train_seconds=train_seconds, eval_seconds=eval_seconds, sparse_source=sparse,
    )
    results["versions"]["sentence_transformers"] = st.__version__
    if trainer.is_world_process_zero():
        output_dir = Path(training_args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".model-", dir=output_dir))  # never a half-written model folder
        try:
            model.save(str(staging))
            _publish_directory(staging, output_dir / "model")  # as SparseBert's save_pretrained moves its files in
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        write_results(output_dir, results)
    return results


def _cosine_similarity_loss(model, teacher=None, task_weight: float = 1.0, kd_weight: float = 1.0):
    from sentence_transformers.sentence_transformer.losses import CosineSimilarityLoss

    if teacher is None:
        return CosineSimilarityLoss(model)

    class CosineDistillationLoss(CosineSimilarityLoss):
        """`CosineSimilarityLoss` on the labels plus Prune OFA's KD on the output: the MSE between the
        student's cosine and a frozen dense teacher's cosine for the same pair."""

        def __init__(self):
            super().__init__(model)
            self._teacher = [teacher.eval().requires_grad_(False)]  # a list: not a submodule, so never trained or saved

        def forward(self, sentence_features, labels):
            features = list(sentence_features)
            with torch.no_grad():
                frozen = [self._teacher[0](dict(f))["sentence_embedding"] for f in features]
            student = [self.model(f)["sentence_embedding"] for f in features]
            score = torch.cosine_similarity(student[0], student[1])
            target = torch.cosine_similarity(frozen[0], frozen[1]).to(score.dtype)
            task = self.loss_fct(score, labels.float().view(-1))
            kd = self.loss_fct(score, target)
            return task_weight * task + kd_weight * kd

    return CosineDistillationLoss()


def load_bi_encoder_teacher(path: str, student):
    """A fine-tuned bi-encoder (a `finetune --head bi-encoder` output folder) to distil from; it must
    tokenize as the student does, since both read the student's batches."""
    st = _sentence_transformers()
    if not (Path(path) / "modules.json").is_file():
        raise ValueError(f"{path}: not a sentence-transformers folder (no modules.json); the bi-encoder's teacher is the "
                         "`model` folder of a `finetune --head bi-encoder` run")
    sentence_transformers_modules(path)  # refuses modules that would import code from outside sentence_transformers
    teacher = st.SentenceTransformer(path, device="cpu", trust_remote_code=False)
    if teacher[0].tokenizer.get_vocab() != student[0].tokenizer.get_vocab():
        raise ValueError(f"{path}: the teacher's tokenizer vocabulary differs from the student's {student[0].tokenizer.name_or_path}")
    return teacher
