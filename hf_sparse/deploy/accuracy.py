"""Task accuracy of a model and of its exports on a GLUE dev set, with the task's own metric."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

PathLike = Union[str, Path]
Predict = Callable[[dict], np.ndarray]  # numpy int64 inputs -> logits


def torch_predictor(model_dir: PathLike) -> Predict:
    """PyTorch fp32 logits of a sequence-classification checkpoint (sparse_bert, or plain bert)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    import hf_sparse  # noqa: F401  (registers sparse_bert with the Auto classes)

    model = AutoModelForSequenceClassification.from_pretrained(model_dir).float().eval()

    def predict(inputs: dict) -> np.ndarray:
        with torch.no_grad():
            return model(**{k: torch.from_numpy(v) for k, v in inputs.items()}).logits.float().numpy()

    return predict


def onnx_predictor(path: PathLike, threads: Optional[int] = None) -> Predict:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    return lambda inputs: session.run(None, {k: v for k, v in inputs.items() if k in names})[0]


def openvino_predictor(
    path: PathLike, precision: str = "f32", sparse_rate: Optional[float] = None, static_shape: Optional[tuple[int, int]] = None
) -> Predict:
    """`static_shape=(batch, seq)`: the IR is compiled for that shape only (`compile_model`); each call's inputs are
    padded to `seq` (masked positions) and run `batch` rows at a time, the last group filled up with copies of its
    last row whose outputs are dropped."""
    from .openvino import compile_model

    compiled = compile_model(path, precision=precision, sparse_rate=sparse_rate, static_shape=static_shape)
    if static_shape is None:
        return lambda inputs: compiled(inputs)[0]
    rows, seq = static_shape

    def predict(inputs: dict) -> np.ndarray:
        length = inputs["input_ids"].shape[1]
        if length > seq:
            raise ValueError(f"{path} was compiled for sequences of {seq} tokens, got inputs of {length} tokens")
        padded = {k: np.pad(v, ((0, 0), (0, seq - length))) for k, v in inputs.items()}  # zeros: masked pad tokens
        count = len(padded["input_ids"])
        outputs = []
        for start in range(0, count, rows):
            group = {k: v[start : start + rows] for k, v in padded.items()}
            fill = rows - len(group["input_ids"])
            group = {k: np.concatenate([v, np.repeat(v[-1:], fill, axis=0)]) if fill else v for k, v in group.items()}
            outputs.append(compiled(group)[0][: rows - fill])
        return np.concatenate(outputs)

    return predict


def glue_dev_predictions(
    predict: Predict,
    tokenizer,
    task: str,
    data_dir: Optional[PathLike] = None,
    max_length: int = 128,
    batch_size: int = 32,
    limit: Optional[int] = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Runs `predict` over a GLUE task's dev set (dynamic padding): `(predictions, references)`, class ids (or
    scores for stsb) and the dev labels, in the dev file's order."""
    from ..tasks.glue import get_glue_task, load_glue
    from ..upstream import DEFAULT_DATA_DIR

    glue = get_glue_task(task)
    dev = load_glue(task, Path(data_dir) if data_dir else DEFAULT_DATA_DIR)["validation"]
    if limit:
        dev = dev.select(range(min(limit, len(dev))))
    outputs = []
    for start in range(0, len(dev), batch_size):
        batch = dev[start : start + batch_size]
        texts = (batch["text_a"], batch["text_b"]) if "text_b" in batch else (batch["text_a"],)
        encoded = tokenizer(*texts, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        inputs = {k: encoded[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        outputs.append(predict(inputs))
    logits = np.concatenate(outputs)
    predictions = logits[:, 0] if glue.num_labels == 1 else logits.argmax(-1)
    return predictions, np.asarray(dev["label"])


def glue_dev_score(
    predict: Predict,
    tokenizer,
    task: str,
    data_dir: Optional[PathLike] = None,
    max_length: int = 128,
    batch_size: int = 32,
    limit: Optional[int] = None,
) -> dict:
    """Runs `predict` over a GLUE task's dev set (dynamic padding) and returns the task's metrics."""
    from ..tasks.glue import get_glue_task
    from ..tasks.metrics import glue_metrics

    predictions, references = glue_dev_predictions(predict, tokenizer, task, data_dir, max_length, batch_size, limit)
    metrics = glue_metrics(task, predictions, references)
    main_metric = get_glue_task(task).main_metric
    return {"metrics": metrics, "score": metrics[main_metric], "main_metric": main_metric, "examples": len(references)}
