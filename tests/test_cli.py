"""`hf-sparse convert` and `hf-sparse inspect` on hand-made dense-with-zeros checkpoints."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from hf_sparse import SparseBertForMaskedLM
from hf_sparse.cli import main

from conftest import dummy_inputs, have_exporters, have_openvino_exporter, tiny_config


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def run_cli(capsys):
    def run(*args):
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


def test_console_script_is_installed(tmp_path):
    script = Path(sys.executable).parent / "hf-sparse"
    result = subprocess.run([str(script), "inspect", tmp_path / "missing"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.startswith("hf-sparse: error:")


@torch.no_grad()
def zero_encoder_weights(model, fraction):
    """Sets about `fraction` of every encoder linear weight to zero, as a checkpoint pruned elsewhere."""
    for name, param in model.named_parameters():
        if ".encoder.layer." in name and name.endswith("weight") and param.dim() == 2:
            param.mul_(torch.rand_like(param) >= fraction)
    return model


@pytest.fixture
def dense_with_zeros(tmp_path, tiny_tokenizer):
    """A plain BertForMaskedLM folder whose encoder weights are 80% zeros, with a tokenizer."""
    torch.manual_seed(0)
    config = transformers.BertConfig(**{**tiny_config().to_diff_dict(), "model_type": "bert"})
    model = zero_encoder_weights(transformers.BertForMaskedLM(config).eval(), 0.8)
    folder = tmp_path / "dense"
    model.save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder, model


def test_convert_inspect_and_back(dense_with_zeros, tmp_path, run_cli):
    folder, dense = dense_with_zeros
    out = tmp_path / "sparse"
    result = run_cli("convert", folder, out)
    assert result.returncode == 0, result.stderr
    assert "global sparsity 0.8" in result.stdout
    from hf_sparse.convert import TOKENIZER_FILES

    source_files = [n for n in TOKENIZER_FILES if (folder / n).is_file()]
    assert "tokenizer_config.json" in source_files
    assert all((out / n).read_bytes() == (folder / n).read_bytes() for n in source_files)

    sparse = SparseBertForMaskedLM.from_pretrained(out)
    inputs = dummy_inputs("SparseBertForMaskedLM")
    with torch.no_grad():
        assert torch.equal(sparse(**inputs).logits, dense(**inputs).logits)
    for name, module in sparse.masked_linears().items():
        assert torch.equal(module.weight_mask, module.weight != 0), name

    report = run_cli("inspect", out, "--json")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    assert data["model_type"] == "sparse_bert" and data["architectures"] == ["SparseBertForMaskedLM"]
    assert data["global_sparsity"] == pytest.approx(sparse.sparsity(), abs=1e-6)
    assert len(data["layers"]) == 12 and all(c["ok"] for c in data["checks"])
    text = run_cli("inspect", out)
    assert "[ok] pruned weights are zero" in text.stdout and "bert.encoder.layer.1.output.dense" in text.stdout

    back = tmp_path / "back"
    result = run_cli("convert", "--to-bert", out, back)
    assert result.returncode == 0, result.stderr
    plain = transformers.BertForMaskedLM.from_pretrained(back)
    assert json.loads((back / "config.json").read_text())["model_type"] == "bert"
    with torch.no_grad():
        assert torch.equal(plain(**inputs).logits, dense(**inputs).logits)


def test_inspect_dense_checkpoint_derives_masks(dense_with_zeros, run_cli):
    folder, _ = dense_with_zeros
    data = json.loads(run_cli("inspect", folder, "--json").stdout)
    assert data["source"].startswith("plain BERT checkpoint")
    assert 0.78 < data["global_sparsity"] < 0.82


def test_inspect_flags_pattern_violation(dense_with_zeros, tmp_path, run_cli):
    folder, _ = dense_with_zeros
    out = tmp_path / "sparse"
    assert run_cli("convert", folder, out, "--pattern", "2:4").returncode == 0  # random zeros are not 2:4
    result = run_cli("inspect", out)
    assert result.returncode == 1
    assert "[FAIL] masks follow the declared pattern '2:4'" in result.stdout


def test_cli_errors_are_specific(dense_with_zeros, tmp_path, capsys):
    folder, _ = dense_with_zeros
    assert main(["inspect", str(tmp_path / "nowhere")]) == 2
    assert "hf-sparse: error:" in capsys.readouterr().err
    (tmp_path / "occupied").mkdir()
    (tmp_path / "occupied" / "x").write_text("keep")
    assert main(["convert", str(folder), str(tmp_path / "occupied")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["convert", str(folder), str(tmp_path / "o2"), "--head", "nonsense"]) == 2
    assert "unknown head 'nonsense'" in capsys.readouterr().err
    assert not (tmp_path / "o2").exists()
    assert main(["convert", str(folder), str(tmp_path / "o3"), "--pattern", "diagonal"]) == 2
    assert "unknown sparsity_pattern 'diagonal'" in capsys.readouterr().err
    assert not (tmp_path / "o3").exists()
    (folder / "model.safetensors").unlink()
    assert main(["convert", str(folder), str(tmp_path / "o4")]) == 2
    assert not (tmp_path / "o4").exists()
    err = capsys.readouterr().err
    assert "hf-sparse: error:" in err and "Traceback" not in err


def test_convert_pretraining_checkpoint_keeps_mlm_head(tmp_path, run_cli):
    """Intel's pruneofa-style checkpoints are BertForPreTraining: the MLM head is kept, NSP dropped."""
    torch.manual_seed(0)
    config = transformers.BertConfig(**{**tiny_config().to_diff_dict(), "model_type": "bert"})
    model = zero_encoder_weights(transformers.BertForPreTraining(config).eval(), 0.9)
    model.save_pretrained(tmp_path / "pretraining")
    result = run_cli("convert", tmp_path / "pretraining", tmp_path / "sparse")
    assert result.returncode == 0, result.stderr
    sparse = SparseBertForMaskedLM.from_pretrained(tmp_path / "sparse")
    assert json.loads((tmp_path / "sparse" / "config.json").read_text())["architectures"] == ["SparseBertForMaskedLM"]
    inputs = dummy_inputs("SparseBertForMaskedLM")
    with torch.no_grad():
        assert torch.equal(sparse(**inputs).logits, model(**inputs).prediction_logits)
    assert 0.89 < sparse.sparsity() < 0.91


def test_compact_command(tmp_path, run_cli, tiny_tokenizer):
    from conftest import build
    from hf_sparse.pruning.structured import StructuredPruning

    model = build("SparseBertForSequenceClassification", sparsity=0.0)
    model.set_masks(StructuredPruning(scope="global").masks(model, 0.5))
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    result = run_cli("compact", tmp_path / "m", tmp_path / "c")
    assert result.returncode == 0, result.stderr
    assert "heads 8 -> 4" in result.stdout and (tmp_path / "c" / "model.safetensors").is_file()
    again = run_cli("compact", tmp_path / "m", tmp_path / "c")
    assert again.returncode == 2 and "exists" in again.stderr


@pytest.mark.skipif(
    not have_openvino_exporter(), reason="needs optimum-intel (the default or the transformers5-openvino environment)"
)
def test_openvino_export_and_bench_commands(tmp_path, run_cli, tiny_tokenizer):
    """The OpenVINO route alone: what a transformers 5 environment with optimum-intel 2.x can run."""
    from conftest import build

    build("SparseBertForSequenceClassification", sparsity=0.9).save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    result = run_cli(
        "export", tmp_path / "m", "--to", "openvino", "--quantize", "int8", "--calibration", "sst2",
        "--calibration-samples", "16", "--out", tmp_path / "ov",
    )
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "ov" / "export_info.json").read_text())
    assert info["int8"]["mode"] == "static (NNCF)" and info["int8"]["weights_behind_transpose"] == 0
    assert (tmp_path / "ov" / "openvino_model_int8.xml").is_file()
    result = run_cli(
        "bench", tmp_path / "m", "--seq", "16", "--runs", "2", "--rounds", "2",
        "--runtimes", "torch-fp32", "ov-fp32", "ov-int8-sparse", "--json", tmp_path / "bench.json",
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [r["runtime"] for r in rows] == ["torch-fp32", "ov-fp32", "ov-int8-sparse"]
    assert all(r["median_ms"] > 0 and r["runs"] == 2 for r in rows)
    assert sum(rows[2]["kernels"].values()) >= 12 and all(k.lower().endswith("i8") for k in rows[2]["kernels"])


@pytest.mark.skipif(not have_exporters(), reason="needs optimum-onnx and optimum-intel (default environment)")
def test_export_and_bench_commands(tmp_path, run_cli, tiny_tokenizer):
    from conftest import build

    build("SparseBertForSequenceClassification", sparsity=0.9).save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    result = run_cli("export", tmp_path / "m", "--to", "onnx", "--quantize", "int8", "--out", tmp_path / "onnx")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout[: result.stdout.rindex("}") + 1])["int8"]["mode"] == "dynamic"
    assert (tmp_path / "onnx" / "model_quantized.onnx").is_file()
    result = run_cli("export", tmp_path / "m", "--to", "onnx", "--reduce-range", "--out", tmp_path / "onnx7")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "onnx7" / "export_info.json").read_text())["int8"]["reduce_range"] is True
    bad = run_cli("export", tmp_path / "m", "--to", "openvino", "--reduce-range")
    assert bad.returncode == 2 and "--reduce-range applies to ONNX Runtime" in bad.stderr
    result = run_cli("export", tmp_path / "m", "--to", "openvino", "--quantize", "none")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m-openvino" / "openvino_model.xml").is_file() and not (tmp_path / "m-openvino" / "openvino_model_int8.xml").exists()
    bad = run_cli("export", tmp_path / "m", "--to", "openvino", "--static")
    assert bad.returncode == 2 and "--static applies to ONNX Runtime" in bad.stderr
    bad = run_cli("export", tmp_path / "m", "--to", "onnx", "--quantize", "int8", "--static", "--calibration", "qat", "--out", tmp_path / "q")
    assert bad.returncode == 2 and "qat_ranges.json is missing" in bad.stderr and not (tmp_path / "q").exists()
    result = run_cli(
        "bench", tmp_path / "m", "--batch", "1", "2", "--seq", "16", "--runs", "3", "--rounds", "3",
        "--runtimes", "torch-fp32", "ort-int8", "ov-int8-sparse", "ov-int8-static", "ov-int8-static-bf16", "--json", tmp_path / "bench.json",
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["runtime"], r["batch"]) for r in rows] == [
        (rt, b) for b in (1, 2) for rt in ("torch-fp32", "ort-int8", "ov-int8-sparse", "ov-int8-static", "ov-int8-static-bf16")
    ]
    assert all(r["median_ms"] > 0 and r["runs"] == 3 for r in rows)
    assert rows[0]["speedup_vs_baseline"] == 1.0
    assert sum(rows[2]["kernels"].values()) >= 12  # what OpenVINO actually ran, recorded per row
    assert sum(rows[8]["kernels"].values()) >= 12  # the static-shape IR compiled for (2, 16) ran at batch 2
    # the precisions its layers ran in: f32 for ov-int8-static, bf16 with the hint where the CPU has native bf16
    assert "bf16" not in rows[3]["precisions"] and rows[3]["precisions"].get("f32", 0) > 0
    from hf_sparse.deploy.openvino import cpu_runs_bf16

    if cpu_runs_bf16():
        assert rows[4]["precisions"].get("bf16", 0) > 0, rows[4]["precisions"]
    else:
        assert rows[4]["precisions"] == rows[3]["precisions"]
    assert "| ort-int8 | 1 | 16 |" in result.stdout
    # against another model's torch-fp32 (here a dense one), timed in the same turns as the rows
    build("SparseBertForSequenceClassification", sparsity=0.0).save_pretrained(tmp_path / "dense")
    result = run_cli(
        "bench", tmp_path / "m", "--seq", "16", "--runs", "2", "--rounds", "2", "--runtimes", "torch-fp32", "ort-fp32",
        "--reference", tmp_path / "dense", "--json", tmp_path / "vs_dense.json",
    )
    assert result.returncode == 0, result.stderr
    assert f"relative to torch-fp32 of {tmp_path / 'dense'}" in result.stdout
    rows = json.loads((tmp_path / "vs_dense.json").read_text())["rows"]
    assert len({r["baseline_ms"] for r in rows}) == 1 and all(r["runs"] == 2 for r in rows)
    for r in rows:  # the baseline is not the row's own median
        assert r["speedup_vs_baseline"] == round(r["baseline_ms"] / r["median_ms"], 3)
    # a plain BERT folder (the dense fine-tuned model as transformers saves it) is a reference too
    build("SparseBertForSequenceClassification", sparsity=0.0).to_dense().save_pretrained(tmp_path / "bert")
    assert json.loads((tmp_path / "bert" / "config.json").read_text())["model_type"] == "bert"
    result = run_cli("bench", tmp_path / "m", "--seq", "16", "--runs", "1", "--rounds", "1", "--runtimes", "torch-fp32",
                     "--reference", tmp_path / "bert")
    assert result.returncode == 0, result.stderr
    missing = run_cli("bench", tmp_path / "m", "--runtimes", "torch-fp32", "--reference", tmp_path / "nope")
    assert missing.returncode != 0 and "reference model folder" in missing.stderr
