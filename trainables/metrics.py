"""Segmentation metrics: a confusion matrix summed over the whole evaluation set (and over processes).

IoU_c = I_c / U_c from dataset-level histograms, as UniMatch's evaluate(); pixels labeled 255 are skipped.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from orchestrator.core.masks import IGNORE


class ConfusionMatrix:
    """mat[t, p] = number of pixels with ground truth t predicted as p. Students and teachers are scored with it.

    Ground truth IGNORE (255) is skipped. A prediction outside [0, num_classes) (a teacher's bug, never a
    student's argmax) counts as wrong: it lands in an extra column that enlarges its true class's union.
    """

    def __init__(self, num_classes: int) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.mat: Tensor | None = None   # (k, k + 1): the last column holds out-of-range predictions

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: `pred` holds class indices (argmax already taken), same shape as `target`."""
        if pred.shape != target.shape:
            raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}; "
                             "pass argmax(logits, dim=1), not the logits")
        k = self.num_classes
        if self.mat is None:
            self.mat = torch.zeros(k, k + 1, dtype=torch.int64, device=target.device)
        t, p = target.flatten().long(), pred.flatten().long().to(target.device)
        keep = (t != IGNORE) & (t >= 0) & (t < k)
        t, p = t[keep], p[keep]
        p = torch.where((p >= 0) & (p < k), p, torch.full_like(p, k))
        self.mat += torch.bincount((k + 1) * t + p, minlength=k * (k + 1)).view(k, k + 1)

    def reset(self) -> None:
        self.mat = None

    def as_lists(self) -> list[list[int]]:
        """The k x k counts as plain ints (what the confusion-matrix picture draws)."""
        if self.mat is None:
            return [[0] * self.num_classes for _ in range(self.num_classes)]
        return self.mat[:, :self.num_classes].cpu().tolist()

    def compute(self) -> tuple[list[float], float]:
        """(IoU per class, mIoU), in percent.

        A class absent from both ground truth and predictions has no IoU: it is NaN in the per-class list
        and left out of the mean (UniMatch would count it as 0; on VOC/PC val every class is present).
        """
        k = self.num_classes
        mat = self.mat.double().cpu() if self.mat is not None else torch.zeros(k, k + 1, dtype=torch.float64)
        inter = mat.diag()
        union = mat[:, :k].sum(0) + mat.sum(1) - inter
        iou = torch.where(union > 0, 100.0 * inter / union.clamp(min=1), torch.full_like(inter, float("nan")))
        present = ~iou.isnan()
        miou = float(iou[present].mean()) if bool(present.any()) else float("nan")
        return [float(v) for v in iou], miou

    def pixel_accuracy(self) -> float:
        """Percent of ground-truth pixels predicted right."""
        if self.mat is None:
            return 0.0
        return 100.0 * float(self.mat.diag().sum()) / max(1, int(self.mat.sum()))

    def pixels(self) -> int:
        """Ground-truth pixels counted (IGNORE excluded)."""
        return 0 if self.mat is None else int(self.mat.sum())

    def reduce_from_all_processes(self) -> None:
        """Sum the matrix over all ranks (no-op unless torch.distributed is initialised).

        Every rank must call it, also a rank that saw no batch (its matrix is zeros).
        """
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self.mat is None:
            device = "cuda" if dist.get_backend() == "nccl" else "cpu"
            self.mat = torch.zeros(self.num_classes, self.num_classes + 1, dtype=torch.int64, device=device)
        dist.all_reduce(self.mat)


# Pixel counts behind the OOD pseudo-label agreement; run_step logs them, the epoch pools them.
OOD_GT_COUNTS = ("ood_gt_agree_px", "ood_gt_used_px", "ood_gt_valid_px", "ood_gt_obj_agree_px", "ood_gt_obj_used_px")


def label_agreement_counts(label: Tensor, used: Tensor, truth: Tensor) -> dict[str, float]:
    """Pixel counts of pseudo-labels against ground truth (255 in `truth` = no ground truth there).

    valid = pixels with ground truth; used = valid pixels the loss trains on; agree = used pixels whose
    pseudo-label equals the ground truth; obj_* = the same over used pixels the pseudo-label calls an object
    (class > 0). Background dominates plain agreement; object precision is where a distractor called a
    target class shows.
    """
    valid = truth != IGNORE
    used_valid = used.bool() & valid
    right = label.long() == truth.long()
    agree = used_valid & right
    obj_used = used_valid & (label.long() > 0)
    counts = (agree.sum(), used_valid.sum(), valid.sum(), (obj_used & right).sum(), obj_used.sum())
    return dict(zip(OOD_GT_COUNTS, (float(c) for c in counts)))


def label_agreement(agree_px: float, used_px: float, valid_px: float, obj_agree_px: float = 0.0,
                    obj_used_px: float = 0.0) -> dict[str, float]:
    """In percent: ood_label_agreement (used pixels that are right), ood_label_coverage (valid pixels used),
    ood_label_object_precision (used pixels labeled as an object that are that object). A share whose
    denominator is zero is left out rather than reported as 0."""
    out = {}
    if valid_px > 0:
        out["ood_label_coverage"] = 100.0 * used_px / valid_px
    if used_px > 0:
        out["ood_label_agreement"] = 100.0 * agree_px / used_px
    if obj_used_px > 0:
        out["ood_label_object_precision"] = 100.0 * obj_agree_px / obj_used_px
    return out
