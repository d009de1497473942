"""A saved checkpoint loads with trust_remote_code=True in a process where hf_sparse cannot be imported."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import build, dummy_inputs

SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_sparse"] = None  # any `import hf_sparse` now fails
    import torch
    from safetensors.torch import load_file, save_file
    import transformers

    folder, inputs_file, out_file = sys.argv[1:4]
    inputs = load_file(inputs_file)
    try:
        transformers.AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=False)
        refused = False
    except Exception as err:
        refused = "trust_remote_code" in str(err) or "sparse_bert" in str(err)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = transformers.AutoModel.from_pretrained(folder, trust_remote_code=True)
    with torch.no_grad():
        logits = model(**inputs).logits
    save_file({"logits": logits}, out_file)
    print("RESULT " + json.dumps({
        "module": type(model).__module__,
        "class": type(model).__name__,
        "base": type(base).__name__,
        "refused_without_trust": refused,
        "sparsity": model.sparsity(),
        "hf_sparse_imported": sys.modules.get("hf_sparse") is not None,
    }))
    """
)


@pytest.mark.parametrize("compacted", [False, True], ids=["masked", "compacted"])
def test_trust_remote_code_without_hf_sparse(tmp_path, compacted):
    model = build("SparseBertForSequenceClassification")
    if compacted:  # layers of different widths must load from the saved code too
        from hf_sparse.deploy.compact import compact_model
        from hf_sparse.pruning.structured import StructuredPruning

        model.set_masks(StructuredPruning(scope="global").masks(model, 0.5))
        model, report = compact_model(model)
        assert report.heads_after < report.heads_before and model.config.is_compacted
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    inputs = dummy_inputs("SparseBertForSequenceClassification")
    save_file(inputs, str(tmp_path / "inputs.safetensors"))
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(folder), str(tmp_path / "inputs.safetensors"), str(tmp_path / "out.safetensors")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
    info = json.loads(line[len("RESULT "):])
    assert info["module"].startswith("transformers_modules.")
    assert info["class"] == "SparseBertForSequenceClassification" and info["base"] == "SparseBertModel"
    assert info["refused_without_trust"] and not info["hf_sparse_imported"]
    assert abs(info["sparsity"] - model.sparsity()) < 1e-9
    with torch.no_grad():
        expected = model(**inputs).logits
    assert torch.equal(load_file(str(tmp_path / "out.safetensors"))["logits"], expected)


ST_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_sparse"] = None  # any `import hf_sparse` now fails
    import torch
    from safetensors.torch import save_file
    from sentence_transformers import SentenceTransformer

    folder, out_file = sys.argv[1:3]
    model = SentenceTransformer(folder, device="cpu", trust_remote_code=True)
    save_file({"embeddings": model.encode(["w1 w2 w3", "w4 w5"], convert_to_tensor=True)}, out_file)
    encoder = model[0].auto_model
    print("RESULT " + json.dumps({"module": type(encoder).__module__, "class": type(encoder).__name__, "sparsity": encoder.sparsity()}))
    """
)


def test_sentence_transformers_bi_encoder_loads_without_hf_sparse(tmp_path, tiny_tokenizer):
    from hf_sparse.transfer.bi_encoder import build_bi_encoder

    upstream = build("SparseBertForMaskedLM", sparsity=0.8, max_position_embeddings=128)
    upstream.save_pretrained(tmp_path / "up")
    tiny_tokenizer.save_pretrained(tmp_path / "up")
    model, _ = build_bi_encoder(str(tmp_path / "up"), max_length=32)
    model.save(str(tmp_path / "bi"))
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-c", ST_SCRIPT, str(tmp_path / "bi"), str(tmp_path / "out.safetensors")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads(next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])
    assert info["module"].startswith("transformers_modules.") and info["class"] == "SparseBertModel"
    assert abs(info["sparsity"] - upstream.sparsity()) < 1e-9
    expected = model.eval().encode(["w1 w2 w3", "w4 w5"], convert_to_tensor=True)
    assert torch.equal(load_file(str(tmp_path / "out.safetensors"))["embeddings"], expected)
