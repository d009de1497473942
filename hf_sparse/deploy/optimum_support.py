"""Teaches Optimum's exporters (ONNX and OpenVINO) about the `sparse_bert` model type.

Two things are needed, and both are done here only:

* an export config registered for `sparse_bert` with Optimum's `TasksManager`, for the `onnx`
  and `openvino` backends: a SparseBert has BERT's inputs and outputs, so it is BERT's config;
* the library name. Optimum infers it from the class's module, which must start with
  `transformers`; ours live in `hf_sparse`. `as_transformers_library()` makes Optimum answer
  "transformers" for SparseBert models (and only for them) while an export runs.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

# SparseBert architecture -> Optimum task name
EXPORT_TASKS = {
    "SparseBertModel": "feature-extraction",
    "SparseBertForMaskedLM": "fill-mask",
    "SparseBertForSequenceClassification": "text-classification",
    "SparseBertForQuestionAnswering": "question-answering",
    "SparseBertForTokenClassification": "token-classification",
    "SparseBertForMultipleChoice": "multiple-choice",
}

_lock = threading.RLock()
_registered: set[str] = set()


def _bert_export_config(backend: str) -> type:
    """Optimum's BERT export config for `backend`.

    optimum-intel 2.x ships its own `BertOpenVINOConfig` and no longer needs optimum-onnx (it has no
    `optimum.exporters.onnx`); optimum-intel 1.x exports BERT with optimum-onnx's `BertOnnxConfig`.
    """
    if backend == "openvino":
        try:
            from optimum.exporters.openvino.model_configs import BertOpenVINOConfig

            return BertOpenVINOConfig
        except ImportError:
            pass
    from optimum.exporters.onnx.model_configs import BertOnnxConfig

    return BertOnnxConfig


def register_sparse_bert(backend: str) -> None:
    """Registers BERT's export config for `sparse_bert` with Optimum's `TasksManager` (idempotent).

    Args:
        backend: "onnx" or "openvino".
    """
    from optimum.exporters.tasks import TasksManager

    with _lock:
        if backend in _registered:
            return

        class SparseBertExportConfig(_bert_export_config(backend)):
            """BERT's export config: a SparseBert takes and returns what BERT does."""

        TasksManager.create_register(backend, overwrite_existing=True)("sparse_bert", *sorted(set(EXPORT_TASKS.values())))(
            SparseBertExportConfig
        )
        _registered.add(backend)


@contextlib.contextmanager
def as_transformers_library() -> Iterator[None]:
    """While active, Optimum infers library "transformers" for SparseBert models and classes."""
    from optimum.exporters.tasks import TasksManager

    from ..models.sparse_bert.modeling_sparse_bert import SparseBertPreTrainedModel

    with _lock:  # held for the whole export: concurrent exports cannot capture each other's patch
        original = TasksManager.__dict__["_infer_library_from_model_or_model_class"]

        def infer(cls, model=None, model_class=None):
            target = type(model) if model is not None else model_class
            if isinstance(target, type) and issubclass(target, SparseBertPreTrainedModel):
                return "transformers"
            return original.__func__(cls, model=model, model_class=model_class)

        TasksManager._infer_library_from_model_or_model_class = classmethod(infer)
        try:
            yield
        finally:
            TasksManager._infer_library_from_model_or_model_class = original
