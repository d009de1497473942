"""hf-sparse: sparse pre-trained BERT models as first-class Hugging Face citizens.

Importing the package registers the `sparse_bert` model type with transformers' Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoModelForMultipleChoice,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from .models.sparse_bert import (
    PRUNABLE_LINEARS,
    MaskedLinear,
    SparseBertConfig,
    SparseBertForMaskedLM,
    SparseBertForMultipleChoice,
    SparseBertForQuestionAnswering,
    SparseBertForSequenceClassification,
    SparseBertForTokenClassification,
    SparseBertModel,
    SparseBertPreTrainedModel,
    SparseFormatError,
    SparsityPattern,
    parse_sparsity_pattern,
)

from .transfer import MaskDriftError, SparsityCallback, WeightAveragingCallback

__version__ = "0.1.0"

_AUTO_CLASSES = (
    (AutoModel, SparseBertModel),
    (AutoModelForMaskedLM, SparseBertForMaskedLM),
    (AutoModelForSequenceClassification, SparseBertForSequenceClassification),
    (AutoModelForQuestionAnswering, SparseBertForQuestionAnswering),
    (AutoModelForTokenClassification, SparseBertForTokenClassification),
    (AutoModelForMultipleChoice, SparseBertForMultipleChoice),
)


def _register() -> None:
    AutoConfig.register(SparseBertConfig.model_type, SparseBertConfig, exist_ok=True)
    for auto_class, model_class in _AUTO_CLASSES:
        auto_class.register(SparseBertConfig, model_class, exist_ok=True)


_register()

__all__ = [
    "PRUNABLE_LINEARS",
    "MaskDriftError",
    "MaskedLinear",
    "SparseBertConfig",
    "SparseBertForMaskedLM",
    "SparseBertForMultipleChoice",
    "SparseBertForQuestionAnswering",
    "SparseBertForSequenceClassification",
    "SparseBertForTokenClassification",
    "SparseBertModel",
    "SparseBertPreTrainedModel",
    "SparseFormatError",
    "SparsityCallback",
    "SparsityPattern",
    "WeightAveragingCallback",
    "parse_sparsity_pattern",
]
