"""Student side of distillation: Distillery's Parquet export as tensors, the KD loss, and a small student model.

Needs torch (the planned `student` extra); `model` also needs transformers. Nothing else in `app` imports this.
"""

from distillery_student.data import IGNORE_INDEX, DistillationDataset, collate, split_by_prompt
from distillery_student.loss import kd_loss, kl_to_teacher

__all__ = [
    "IGNORE_INDEX",
    "DistillationDataset",
    "collate",
    "kd_loss",
    "kl_to_teacher",
    "split_by_prompt",
]
