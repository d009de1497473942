"""How distinct are sentence representations after upstream pruning? (A diagnostic for sparse transfer.)

    python benchmarks/representation.py [--sentences 256]

For the dense MiniLM-L6 and each upstream checkpoint out/<recipe>/model of a recipe in recipes/
(named as the transfer rows: upstream-90 for prune_ofa_90, upstream-sparsebert-90 for sparsebert_90), encodes the first
N SST-2 dev sentences and reports the mean pairwise cosine similarity of the [CLS] vectors (what
BertForSequenceClassification's pooler reads) and of mean-pooled vectors. Values near 1 mean the
model maps different sentences to nearly the same vector. Also scores STS-B dev zero-shot (no
fine-tuning): the Spearman correlation, ×100, between the cosine of the two sentences' mean-pooled
vectors and the gold similarity, which is how MiniLM-L6 was trained to be used. It measures how much
of the dense model's sentence knowledge survives pruning; the `embeddings-only` row (mean of the
input embeddings, no encoder layer; they are never pruned) is the floor word identity alone gives. Writes benchmarks/results/representation.json;
rows of checkpoints missing here keep their earlier figures (listed under `kept_from_earlier_runs`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=256)
    args = parser.parse_args()

    import torch
    import transformers

    from hf_sparse import SparseBertModel
    from hf_sparse.distillation import sentence_vector  # the sentence vectors PrC contrasts
    from hf_sparse.tasks.glue import load_glue
    from hf_sparse.tasks.metrics import spearman
    from hf_sparse.upstream import DEFAULT_DATA_DIR, minilm_folder
    from transfer import upstream_row  # the transfer table's row names

    sentences = load_glue("sst2", DEFAULT_DATA_DIR)["validation"]["text_a"][: args.sentences]
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_folder())
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=64, return_tensors="pt")
    class EmbeddingsOnly(torch.nn.Module):
        """The dense model's input embeddings, no encoder layer: the floor that word identity alone gives."""

        def __init__(self):
            super().__init__()
            self.embeddings = transformers.AutoModel.from_pretrained(minilm_folder()).embeddings

        def forward(self, input_ids, token_type_ids=None, attention_mask=None):
            return transformers.modeling_outputs.BaseModelOutput(last_hidden_state=self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids))

    models = {"dense": lambda: transformers.AutoModel.from_pretrained(minilm_folder()), "embeddings-only": EmbeddingsOnly}
    for recipe in sorted((ROOT / "recipes").glob("*.yaml")):
        folder = ROOT / "out" / recipe.stem / "model"
        if folder.is_dir():
            models[upstream_row(recipe.stem)] = lambda folder=folder: SparseBertModel.from_pretrained(folder)
    stsb = load_glue("stsb", DEFAULT_DATA_DIR)["validation"]
    pairs = [tokenizer(list(stsb[column]), padding=True, truncation=True, max_length=128, return_tensors="pt") for column in ("text_a", "text_b")]

    def unit(vectors):
        return torch.nn.functional.normalize(vectors, dim=-1)

    def mean_pooled(model, encoded, batch_size=128):
        vectors = []
        for start in range(0, encoded["input_ids"].shape[0], batch_size):
            chunk = {k: v[start : start + batch_size] for k, v in encoded.items()}
            vectors.append(unit(sentence_vector(model(**chunk).last_hidden_state, chunk["attention_mask"], "mean")))
        return torch.cat(vectors)

    upper = torch.triu(torch.ones(len(sentences), len(sentences), dtype=torch.bool), 1)
    results = {}
    for name, load in models.items():
        model = load().eval()
        with torch.no_grad():
            hidden = model(**batch).last_hidden_state
            cosines = (mean_pooled(model, pairs[0]) * mean_pooled(model, pairs[1])).sum(-1)
        cls = unit(sentence_vector(hidden, batch["attention_mask"], "cls"))
        mean = unit(sentence_vector(hidden, batch["attention_mask"], "mean"))
        results[name] = {
            "cls_mean_pairwise_cosine": round(float((cls @ cls.T)[upper].mean()), 4),
            "meanpool_mean_pairwise_cosine": round(float((mean @ mean.T)[upper].mean()), 4),
            "stsb_zero_shot_spearman": round(100 * spearman(cosines.numpy(), list(stsb["label"])), 2),
        }
        print(name, results[name], flush=True)
    path = ROOT / "benchmarks" / "results" / "representation.json"
    out = {
        "command": f"python benchmarks/representation.py --sentences {args.sentences}",
        "sentences": len(sentences),
        "stsb_pairs": len(stsb),
        "results": results,
    }
    out = merge_earlier(json.loads(path.read_text()) if path.exists() else {}, out)
    path.write_text(json.dumps(out, indent=1) + "\n")
    return 0


def merge_earlier(previous: dict, current: dict) -> dict:
    """`current` plus the rows of `previous` it lacks (checkpoints not on this machine), listed under
    `kept_from_earlier_runs`; only when both runs used the same sentences and STS-B pairs."""
    same_setup = all(previous.get(key) == current[key] for key in ("sentences", "stsb_pairs"))
    kept = {name: r for name, r in previous.get("results", {}).items() if name not in current["results"]} if same_setup else {}
    return {**current, "results": {**current["results"], **kept}, "kept_from_earlier_runs": sorted(kept)}


if __name__ == "__main__":
    sys.exit(main())
