"""Sparse transfer: fine-tuning with the upstream pattern locked, QAT, and the task runner."""

from .callback import MaskDriftError, SparsityCallback, mask_drift, reference_masks
from .qat import QATConfig, convert_qat, is_qat, prepare_qat

__all__ = ["MaskDriftError", "QATConfig", "SparsityCallback", "convert_qat", "is_qat", "mask_drift", "prepare_qat", "reference_masks"]
