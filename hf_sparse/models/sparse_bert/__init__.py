from .configuration_sparse_bert import (
    PRUNABLE_LINEARS,
    SparseBertConfig,
    SparsityPattern,
    parse_sparsity_pattern,
)
from .modeling_sparse_bert import (
    MaskedLinear,
    SparseBertForMaskedLM,
    SparseBertForMultipleChoice,
    SparseBertForQuestionAnswering,
    SparseBertForSequenceClassification,
    SparseBertForTokenClassification,
    SparseBertModel,
    SparseBertPreTrainedModel,
)
from .sparse_format import SparseFormatError
