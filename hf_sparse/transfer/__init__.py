"""Sparse transfer: fine-tuning with the upstream pattern locked, QAT, and the task runner."""

from .averaging import WeightAveragingCallback
from .callback import MaskDriftError, SparsityCallback, mask_drift, reference_masks
from .qat import QATConfig, convert_qat, is_qat, prepare_qat

__all__ = ["MaskDriftError", "QATConfig", "SparsityCallback", "WeightAveragingCallback", "convert_qat", "is_qat", "mask_drift", "prepare_qat", "reference_masks"]
