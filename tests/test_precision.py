"""Training precision on CPU: bf16 autocast only where the CPU computes bf16 natively."""

import logging
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainingArguments

from hf_sparse.transfer import precision

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import transfer  # noqa: E402


def test_cpu_bf16_check_follows_onednn_then_the_cpu_capability(monkeypatch):
    monkeypatch.setattr(precision, "_onednn_bf16_check", lambda: lambda: True)
    assert precision.cpu_bf16_is_fast() is True
    monkeypatch.setattr(precision, "_onednn_bf16_check", lambda: lambda: False)
    assert precision.cpu_bf16_is_fast() is False
    monkeypatch.setattr(precision, "_onednn_bf16_check", lambda: None)  # no oneDNN op: PyTorch's CPU capability decides
    for capability, fast in (("AVX512", True), ("AVX2", False), ("DEFAULT", False)):
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda c=capability: c)
        assert precision.cpu_bf16_is_fast() is fast


def test_cpu_bf16_check_runs_on_this_machine():
    assert precision.cpu_bf16_is_fast() in (True, False)


@pytest.mark.parametrize("bf16, fast, warned", [(True, False, True), (True, True, False), (False, False, False)])
def test_bf16_on_a_cpu_that_emulates_it_is_warned_about(tmp_path, monkeypatch, caplog, bf16, fast, warned):
    monkeypatch.setattr(precision, "cpu_bf16_is_fast", lambda: fast)
    args = TrainingArguments(output_dir=str(tmp_path), bf16=bf16, use_cpu=True, report_to="none")
    with caplog.at_level(logging.WARNING, logger=precision.__name__):
        assert precision.warn_if_bf16_is_slow(args) is warned
    assert ("bf16=True on a CPU without native bf16" in caplog.text) is warned
    assert precision.training_precision(args) == ("bf16" if bf16 else "fp32")


@pytest.mark.parametrize("choice, fast, flag", [("auto", True, "true"), ("auto", False, "false"), ("bf16", False, "true"), ("fp32", True, "false")])
def test_transfer_rows_train_in_bf16_only_where_it_is_native_unless_told(tmp_path, monkeypatch, choice, fast, flag):
    monkeypatch.setattr(precision, "cpu_bf16_is_fast", lambda: fast)
    monkeypatch.setattr("hf_sparse.upstream.minilm_folder", lambda: tmp_path / "minilm")
    argv = transfer._row_arguments("dense", "mrpc", 1, False, precision=choice)
    assert argv[argv.index("--bf16") + 1] == flag
    with pytest.raises(SystemExit, match="--precision must be auto, bf16 or fp32, got 'fp16'"):
        transfer._row_arguments("dense", "mrpc", 1, False, precision="fp16")
