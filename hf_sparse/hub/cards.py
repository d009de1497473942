"""Model cards for the zoo, generated from results files only.

Every number on a card is read from a results file written by a benchmark command
(`benchmarks/upstream.py`, `benchmarks/transfer.py`) or, for converted third-party checkpoints,
from the entry's `cited_results` (quoted as the source published them). `render_card` raises
`CardError` rather than leave out or invent a number the card needs.
"""

from __future__ import annotations

import glob
import json
import statistics
from dataclasses import dataclass, field, fields
from pathlib import Path
from string import Template
from typing import Optional

import yaml

from ..upstream import render_recipe

TEMPLATE = Path(__file__).resolve().parents[2] / "model_cards" / "template.md"
KINDS = ("upstream", "finetuned", "converted")
TASKS = ("sst2", "cola", "mrpc", "rte", "stsb", "squad")
BASE_TAGS = ["sparse", "pruned", "sparse_bert", "hf-sparse", "bert"]
_NOT_METRICS = ("loss", "runtime", "samples_per_second", "steps_per_second", "epoch")


class CardError(ValueError):
    """A card cannot be written honestly: a results file is missing, empty or inconsistent."""


@dataclass
class ZooEntry:
    """One model of the zoo (`upload/zoo.yaml`). Paths are relative to the repository root."""

    name: str  # repo name under the zoo's organisation
    kind: str  # upstream | finetuned | converted
    model: Optional[str] = None  # local checkpoint folder (built here, or where a converted one is written)
    task: Optional[str] = None  # finetuned: sst2 | cola | mrpc | rte | stsb | squad
    results: list = field(default_factory=list)  # globs of results files the card reports
    transfer_results: list = field(default_factory=list)  # upstream: fine-tuning results of this checkpoint; finetuned: comparison rows
    recipe: Optional[str] = None
    base_model: str = "sentence-transformers/all-MiniLM-L6-v2"
    license: str = "apache-2.0"
    source: Optional[str] = None  # converted: Hub id or local folder of the original checkpoint
    head: Optional[str] = None  # converted: model head, if not the checkpoint's own
    cited_results: list = field(default_factory=list)  # converted: [{task, dataset, metric, value, source}]
    results_note: Optional[str] = None  # converted: where the published results are, if not restated
    description: Optional[str] = None
    exports: list = field(default_factory=list)  # built into <model>/onnx, <model>/openvino before publishing

    def __post_init__(self):
        if self.kind not in KINDS:
            raise CardError(f"zoo entry {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "finetuned" and self.task not in TASKS:
            raise CardError(f"zoo entry {self.name!r}: a finetuned model needs `task`, one of {TASKS}")
        unknown = [e for e in self.exports if e not in ("onnx", "openvino")]
        if unknown:
            raise CardError(f"zoo entry {self.name!r}: exports must be 'onnx' and/or 'openvino', got {unknown}")
        if self.kind == "converted" and not self.source:
            raise CardError(f"zoo entry {self.name!r}: a converted model needs `source`")
        if self.kind != "converted" and not self.results:
            raise CardError(f"zoo entry {self.name!r}: list the results files its card reports (`results`)")
        if not self.model:
            raise CardError(f"zoo entry {self.name!r}: `model` (the checkpoint folder, or where a conversion is written) is required")

    @classmethod
    def from_dict(cls, data: dict) -> "ZooEntry":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CardError(f"zoo entry {data.get('name')!r}: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**data)


def load_zoo(path: str | Path) -> tuple[str, list[ZooEntry]]:
    """The organisation and entries of a zoo file."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict) or "org" not in data or not isinstance(data.get("models"), list):
        raise CardError(f"{path}: expected a mapping with `org` and a list `models`")
    entries = [ZooEntry.from_dict(item) for item in data["models"]]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise CardError(f"{path}: duplicate model names {sorted({n for n in names if names.count(n) > 1})}")
    return data["org"], entries


# ---- results ---------------------------------------------------------------------------------------
def _files(patterns: list, root: Path, what: str, entry: ZooEntry) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(Path(p) for p in glob.glob(str(root / pattern)))
        if not matches:
            raise CardError(f"{entry.name}: no {what} results file matches {pattern!r}; run the benchmark that writes it")
        found += matches
    return found


def _fmt(values: list[float], scale: float) -> str:
    scaled = [v * scale for v in values]
    text = f"{statistics.mean(scaled):.2f}"
    if len(scaled) > 1:
        text += f" ± {statistics.stdev(scaled):.2f}"
    return text


def transfer_summary(files: list[Path]) -> dict[str, dict]:
    """Fine-tuning results grouped by (row, task): each metric as a list over seeds, with commands and budget."""
    groups: dict[str, dict] = {}
    for file in files:
        data = json.loads(file.read_text())
        for key in ("task", "metrics", "main_metric", "seed", "train_examples", "epochs"):
            if key not in data:
                raise CardError(f"{file}: not a transfer results file (no {key!r})")
        head = " (bi-encoder)" if data.get("head") == "bi-encoder" else ""  # files before heads existed are cross-encoders
        label = f"{data.get('row', data.get('mode'))}{' + KD' if data.get('kd') else ''}{head}"
        group = groups.setdefault(
            f"{label}|{data['task']}",
            {"label": label, "task": data["task"], "metrics": {}, "seeds": [], "commands": [], "budget": data},
        )
        budget = {k: data.get(k) for k in ("train_examples", "epochs", "max_length", "learning_rate")}
        first = {k: group["budget"].get(k) for k in budget}
        if budget != first:
            raise CardError(f"{file}: budget {budget} differs from the other seeds' {first}; a row's seeds must share one budget")
        if data["seed"] in group["seeds"]:
            raise CardError(f"{file}: seed {data['seed']} of {label} / {data['task']} appears twice")
        group["seeds"].append(data["seed"])
        group["commands"].append(data.get("command", ""))
        for metric, value in data["metrics"].items():
            if metric not in _NOT_METRICS:
                group["metrics"].setdefault(metric, []).append(float(value))
    return groups


def _scale(task: str) -> float:
    return 1.0 if task == "squad" else 100.0  # SQuAD EM/F1 are already percentages


def _transfer_table(groups: dict[str, dict]) -> str:
    lines = ["| fine-tuning | task | dev metrics (×100, mean ± std) | seeds | train examples × epochs |", "|---|---|---|---:|---|"]
    for group in sorted(groups.values(), key=lambda g: (g["task"], g["label"])):
        metrics = ", ".join(f"{m} {_fmt(v, _scale(group['task']))}" for m, v in group["metrics"].items())
        budget = group["budget"]
        lines.append(
            f"| {group['label']} | {group['task']} | {metrics} | {len(group['seeds'])} | {budget['train_examples']:,} × {budget['epochs']:g} |"
        )
    return "\n".join(lines)


def _eval_results(groups: dict[str, dict], task_type: Optional[str] = None) -> list:
    from huggingface_hub import EvalResult

    results = []
    for group in groups.values():
        task = group["task"]
        squad = task == "squad"
        for metric, values in group["metrics"].items():
            results.append(
                EvalResult(
                    task_type=task_type or ("question-answering" if squad else "text-classification"),
                    dataset_type="squad" if squad else "glue",
                    dataset_name="SQuAD v1.1" if squad else f"GLUE {task.upper()}",
                    dataset_config=None if squad else task,
                    dataset_split="validation",
                    metric_type=metric,
                    metric_value=round(statistics.mean(values) * _scale(task), 2),
                    metric_name=f"{metric} (mean of {len(values)} seed{'s' if len(values) > 1 else ''})",
                )
            )
    return results


# ---- the card ---------------------------------------------------------------------------------------
def _layer_table(report: dict) -> str:
    lines = ["| layer | shape | sparsity |", "|---|---|---:|"]
    for layer in report["layers"]:
        lines.append(f"| {layer['name']} | {'x'.join(map(str, layer['shape']))} | {layer['sparsity']:.4f} |")
    return "\n".join(lines)


def sparsity_plot(report: dict, path: str | Path) -> None:
    """Bar chart of the per-layer sparsity in an `inspect_checkpoint` report, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [layer["name"].split("encoder.")[-1].replace("layer.", "L").replace("attention.", "attn.") for layer in report["layers"]]
    values = [100 * layer["sparsity"] for layer in report["layers"]]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names)), 3.6))
    ax.bar(range(len(names)), values, color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_ylabel("sparsity (%)")
    ax.set_ylim(0, 100)
    ax.axhline(100 * report["global_sparsity"], color="#c44e52", linewidth=1, label=f"global {100 * report['global_sparsity']:.1f}%")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render_card(entry: ZooEntry, repo_id: str, root: str | Path, report: dict, exports: tuple[str, ...] = ()) -> str:
    """The README.md of the model's repository.

    Args:
        entry: the zoo entry.
        repo_id: where it is published (`org/name`), for the usage snippets.
        root: the folder the entry's result globs are relative to (the hf-sparse repository).
        report: `hf_sparse.convert.inspect_checkpoint` of the checkpoint being published.
        exports: sub-folders of the published repo holding exports (`onnx`, `openvino`).

    Raises:
        CardError: a results file is missing or malformed, or a converted entry cites nothing.
    """
    from huggingface_hub import EvalResult, ModelCardData

    root = Path(root)
    tags = list(BASE_TAGS)
    eval_results: list = []
    datasets: list[str] = []
    reproduce: list[str] = []
    auto_class, pipeline_tag, library = "AutoModelForMaskedLM", "fill-mask", "transformers"
    sparsity = report["global_sparsity"]
    if entry.kind == "upstream":
        tags += ["prune-once-for-all", "upstream-pruning"]
        datasets = ["wikitext", "squad"]
        rows = ["| model | MLM loss | MLM accuracy | steps | wall time |", "|---|---:|---:|---:|---|"]
        for file in _files(entry.results, root, "upstream", entry):
            data = json.loads(file.read_text())
            try:
                m = data["metrics"]
                rows.append(f"| dense teacher (MiniLM-L6 + warmed-up MLM head) | {m['teacher']['mlm_loss']:.3f} | {m['teacher']['mlm_accuracy']:.3f} | – | – |")
                rows.append(
                    f"| **this model** ({m['sparsity']:.0%} sparse) | {m['student']['mlm_loss']:.3f} | "
                    f"{m['student']['mlm_accuracy']:.3f} | {m['steps']} | {m['wall_seconds'] / 60:.0f} min ({m.get('device', 'cpu')}) |"
                )
                accuracy = m["student"]["mlm_accuracy"]
            except (KeyError, TypeError) as err:
                raise CardError(f"{file}: not an upstream results file (missing {err})") from None
            eval_results.append(
                EvalResult(
                    task_type="fill-mask", dataset_type="wikitext", dataset_name="WikiText-2 (test)", dataset_config="wikitext-2-v1",
                    dataset_split="test", metric_type="accuracy", metric_value=round(100 * accuracy, 2),
                    metric_name="masked-token accuracy (15% masked, 256 blocks of 128 tokens)",
                )
            )
            reproduce.append(data.get("command", ""))
        results = "Masked-LM on the held-out WikiText-2 test file:\n\n" + "\n".join(rows)
        if entry.transfer_results:
            groups = transfer_summary(_files(entry.transfer_results, root, "transfer", entry))
            results += "\n\nFine-tuned from this checkpoint with the pattern locked, next to the dense model with the same budget (full dev sets):\n\n" + _transfer_table(groups)
            reproduce += sorted({c for g in groups.values() for c in g["commands"] if c})
            datasets.append("glue")
        summary = (
            f"MiniLM-L6 (`{entry.base_model}`) pruned **once, upstream**, to {sparsity:.0%} unstructured sparsity of "
            "all encoder linear layers (Prune Once for All: masked-LM + knowledge distillation from the dense model, "
            "cubic gradual magnitude pruning). Fine-tune it on your task with the pattern locked "
            "(`hf-sparse finetune`, or `hf_sparse.SparsityCallback` on a `Trainer`)."
        )
        method = _recipe_section(entry, root)
    elif entry.kind == "finetuned":
        squad = entry.task == "squad"
        auto_class = "AutoModelForQuestionAnswering" if squad else "AutoModelForSequenceClassification"
        pipeline_tag = "question-answering" if squad else "text-classification"
        tags += ["prune-once-for-all", "sparse-transfer"]
        datasets = ["squad"] if squad else ["glue"]
        groups = transfer_summary(_files(entry.results, root, "transfer", entry))
        tasks = sorted({g["task"] for g in groups.values()})
        if tasks != [entry.task]:
            raise CardError(f"{entry.name}: its results files cover tasks {tasks}, expected only {entry.task}")
        heads = {g["budget"].get("head", "cross-encoder") for g in groups.values()}
        if len(heads) > 1:
            raise CardError(f"{entry.name}: its results files mix heads {sorted(heads)}; a model has one")
        bi_encoder = heads == {"bi-encoder"}
        if bi_encoder:
            pipeline_tag, library = "sentence-similarity", "sentence-transformers"
            tags += ["sentence-transformers", "sentence-similarity"]
        eval_results = _eval_results(groups, "sentence-similarity" if bi_encoder else None)
        results = "Dev-set results:\n\n" + _transfer_table(groups)
        reproduce = sorted({c for g in groups.values() for c in g["commands"] if c})
        if entry.transfer_results:  # other models with the same budget: shown, not in the model-index
            others = transfer_summary(_files(entry.transfer_results, root, "comparison", entry))
            results += "\n\nFor comparison, fine-tuned with the same budget (not this model):\n\n" + _transfer_table(others)
            reproduce += sorted({c for g in others.values() for c in g["commands"] if c})
        summary = (
            f"A {sparsity:.0%}-sparse MiniLM-L6 fine-tuned on {entry.task.upper()} with its upstream sparsity pattern "
            "locked (sparse transfer, Prune Once for All); `+ KD` rows distil from a dense fine-tuned teacher."
        )
        if bi_encoder:
            summary += (
                " It is a bi-encoder: each sentence is encoded alone and mean-pooled, and a pair is scored by the cosine "
                "of the two vectors."
            )
        method = _recipe_section(entry, root)
    else:
        tags += ["converted"]
        if not entry.cited_results and not entry.results_note:
            raise CardError(
                f"{entry.name}: a converted model must cite its published results (`cited_results`) or say where they are (`results_note`)"
            )
        lines = ["| task | dataset | metric | value | source |", "|---|---|---|---:|---|"]
        for cited in entry.cited_results:
            try:
                lines.append(f"| {cited['task']} | {cited['dataset']} | {cited['metric']} | {cited['value']} | {cited['source']} |")
            except (KeyError, TypeError) as err:
                raise CardError(f"{entry.name}: cited result {cited!r} lacks {err}") from None
        results = "Published by the original authors — **cited, not re-measured here**:\n\n" + "\n".join(lines)
        if entry.results_note:
            results += "\n\n" + entry.results_note
        summary = (
            f"`{entry.source}` converted to the hf-sparse format: masks derived from the zeros of its weights, "
            "weights unchanged, stored compressed (values + 1-bit masks)."
        )
        method = f"Converted with `hf-sparse convert {entry.source} <out>`; the checks of `hf-sparse inspect` passed."
        reproduce = [f"hf-sparse convert {entry.source} out/{entry.name}"]
    card_data = ModelCardData(
        license=entry.license, base_model=entry.base_model, datasets=datasets or None, tags=tags, library_name=library,
        pipeline_tag=pipeline_tag, model_name=entry.name, eval_results=eval_results or None,
    )
    sparsity_text = (
        f"Global sparsity of the prunable encoder weights: **{sparsity:.2%}** ({report['kept_weights']:,} of "
        f"{report['prunable_weights']:,} kept), pattern `{report['sparsity_pattern']}`; weight files "
        f"{report['weight_bytes'] / 1e6:.1f} MB (values + 1-bit masks). Fully pruned attention heads: "
        f"{report['fully_pruned_heads']}, FFN neurons: {report['fully_pruned_neurons']}.\n\n"
        "<details><summary>Per layer</summary>\n\n" + _layer_table(report) + "\n\n</details>"
    )
    return Template(TEMPLATE.read_text()).substitute(
        metadata=card_data.to_yaml(),
        title=entry.name,
        summary=entry.description or summary,
        results=results,
        sparsity=sparsity_text,
        method=method,
        repo_id=repo_id,
        usage=_usage_section(auto_class, repo_id, library == "sentence-transformers"),
        exports=_exports_section(exports, repo_id, auto_class.replace("Auto", "ORT")),
        limitations=_limitations(entry),
        reproduce="\n".join(f"- `{c}`" for c in reproduce if c) or "-",
    )


def _usage_section(auto_class: str, repo_id: str, sentence_transformers: bool) -> str:
    if sentence_transformers:
        return (
            "A [sentence-transformers](https://sbert.net) model (encoder + mean pooling). With hf-sparse installed "
            "(`pip install hf-sparse[sentence]`):\n\n```python\nimport hf_sparse  # registers the sparse_bert model type\n"
            f'from sentence_transformers import SentenceTransformer\n\nmodel = SentenceTransformer("{repo_id}")\n'
            'embeddings = model.encode(["A man is playing a guitar.", "Someone plays the guitar."])\n'
            "print(model.similarity(embeddings[0], embeddings[1]))\n```\n\n"
            "Without hf-sparse, the modeling code stored in this repository loads it (read it first: it is code you run):\n\n"
            f'```python\nmodel = SentenceTransformer("{repo_id}", trust_remote_code=True)\n```\n\n'
            "For runtimes that know nothing of masks, `hf-sparse convert --to-bert <folder> <out>` writes a plain BERT "
            "encoder (zeros in the weights)."
        )
    return (
        "With [hf-sparse](https://github.com/hf-sparse/hf-sparse) installed (`pip install hf-sparse`), the model loads like any other:\n\n"
        f"```python\nimport hf_sparse  # registers the sparse_bert model type\nfrom transformers import {auto_class}, AutoTokenizer\n\n"
        f'model = {auto_class}.from_pretrained("{repo_id}")\ntokenizer = AutoTokenizer.from_pretrained("{repo_id}")\n```\n\n'
        "Without hf-sparse, the modeling code stored in this repository loads it (read it first: it is code you run):\n\n"
        f'```python\nfrom transformers import {auto_class}\n\nmodel = {auto_class}.from_pretrained("{repo_id}", trust_remote_code=True)\n```\n\n'
        "For runtimes that know nothing of masks, `hf-sparse convert --to-bert <folder> <out>` writes a plain BERT checkpoint "
        "(zeros in the weights)."
    )


def _recipe_section(entry: ZooEntry, root: Path) -> str:
    if not entry.recipe:
        return "See the commands under *Reproduce*."
    path = root / entry.recipe
    if not path.is_file():
        raise CardError(f"{entry.name}: recipe {path} not found")
    try:
        text = render_recipe(path)
    except (ValueError, FileNotFoundError, yaml.YAMLError) as error:
        raise CardError(f"{entry.name}: recipe {path} cannot be read: {error}") from error
    return f"Upstream recipe (`{entry.recipe}`, also in this repository as `recipe.yaml`):\n\n```yaml\n{text.strip()}\n```"


def _exports_section(exports: tuple[str, ...], repo_id: str, ort_class: str) -> str:
    if not exports:
        return "No ONNX / OpenVINO export is published in this repository yet."
    parts = []
    if "onnx" in exports:
        parts.append(
            "ONNX Runtime files are in `onnx/`: `model.onnx` (fp32) and `model_quantized.onnx` (dynamic INT8):\n\n"
            f"```python\nfrom optimum.onnxruntime import {ort_class}\n"
            f'model = {ort_class}.from_pretrained("{repo_id}", subfolder="onnx", file_name="model_quantized.onnx")\n```'
        )
    if "openvino" in exports:
        parts.append(
            "OpenVINO files are in `openvino/`: `openvino_model.xml` (fp32) and `openvino_model_int8.xml` "
            "(NNCF static INT8 of weights and activations):\n\n```python\nfrom optimum.intel import "
            f'{ort_class.replace("ORT", "OV")}\nmodel = {ort_class.replace("ORT", "OV")}.from_pretrained("{repo_id}", '
            'subfolder="openvino", file_name="openvino_model_int8.xml")\n```'
        )
    return "\n\n".join(parts)


def _limitations(entry: ZooEntry) -> str:
    speed = (
        "- Speed: unstructured sparsity makes the files small; it makes inference faster only on runtimes with "
        "sparse kernels (e.g. OpenVINO's sparse INT8 weights). PyTorch runs the model as a dense one.\n"
    )
    if entry.kind == "converted":
        return speed + "- Not re-evaluated here: the numbers above are the original authors'."
    return speed + (
        "- Built on 2 CPU cores with short budgets (the tables give steps, examples and epochs). The dense teacher "
        "is MiniLM-L6, a sentence-embedding model that ships without an MLM head: the head was warmed up on the "
        "corpus first, so its MLM scores are low. Expect less than long GPU runs on BERT-base reach.\n"
        "- English only; the upstream text is WikiText-2 plus the passages of a SQuAD train subset."
    )
