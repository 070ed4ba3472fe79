"""What the manifest and the diagnostics need from a labeling run, gathered batch by batch while the labels
stream in, so nothing is read back from the shards afterwards (no second pass).

Pure numpy (no Ray, no parquet). The images the diagnostics look at are fixed before labeling starts, from the
job's item list: the first ids (sorted) for the overlays, and the first GT_MAX_IMAGES ids with a ground-truth
mask for the teacher's IoU. Their label bytes are kept as they pass; the IoU is accumulated on the way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.labels.diagnostics import GT_MAX_IMAGES, OVERLAY_IMAGES

# Overlay candidates beyond OVERLAY_IMAGES, in case some of the first images are broken (rejected).
OVERLAY_SLACK = 32


@dataclass
class Tally:
    names: list[str]
    conf_bins: int
    overlay_candidates: list[str]            # sorted image ids
    gt_masks: dict[str, str]                 # image_id → mask path, for the teacher-IoU slice
    overlay_masks: dict[str, str] = field(default_factory=dict)   # the overlay candidates' masks
    images: int = 0
    ids: list[str] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    nodes: set[str] = field(default_factory=set)
    kept: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)   # overlay rows: (label, confidence)
    score: Any = None                        # diagnostics.GroundTruthScore when the slice is non-empty

    def __post_init__(self):
        self.pixels = np.zeros(len(self.names), np.int64)
        self.hist = np.zeros(self.conf_bins, np.int64)
        self._overlay = set(self.overlay_candidates)
        if self.gt_masks and self.score is None:
            from orchestrator.labels.diagnostics import GroundTruthScore

            self.score = GroundTruthScore(len(self.names))

    @classmethod
    def for_items(cls, names: list[str], conf_bins: int, item_ids: list[str], masks: dict[str, str]) -> "Tally":
        ordered = sorted(item_ids)
        with_gt = [i for i in ordered if i in masks][:GT_MAX_IMAGES]
        overlay = ordered[:OVERLAY_IMAGES + OVERLAY_SLACK]
        return cls(names, conf_bins, overlay, {i: masks[i] for i in with_gt},
                   {i: masks[i] for i in overlay if i in masks})

    def add(self, batch: dict[str, Any]) -> None:
        """One batch of TeacherActor output rows."""
        for k, image_id in enumerate(batch["image_id"]):
            image_id = str(image_id)
            self.images += 1
            self.nodes.add(str(batch["node"][k]))
            if batch["error"][k]:
                self.rejected.append({"image_id": image_id, "error": str(batch["error"][k])})
                continue
            self.ids.append(image_id)
            self.pixels += np.asarray(batch["class_pixels"][k], np.int64)
            self.hist += np.asarray(batch["conf_hist"][k], np.int64)
            if image_id in self._overlay:
                self.kept[image_id] = (batch["label"][k], batch["confidence"][k])
            if image_id in self.gt_masks:
                self._score(image_id, batch["label"][k])

    def _score(self, image_id: str, label_png: bytes) -> None:
        from orchestrator.core.images import SampleError, load_mask
        from orchestrator.core.masks import decode_png

        try:
            self.score.update(image_id, decode_png(label_png), load_mask(self.gt_masks[image_id]))
        except SampleError as err:
            self.score.skipped.append({"image_id": image_id, "reason": str(err)})

    def overlay_ids(self) -> list[str]:
        return [i for i in self.overlay_candidates if i in self.kept][:OVERLAY_IMAGES]

    def manifest_fields(self) -> dict[str, Any]:
        """The manifest's counts and label statistics (the caller adds key, inputs and timings)."""
        share = (self.pixels / max(1, self.pixels.sum())).round(5).tolist() if self.ids else []
        return {"images": self.images, "labeled": len(self.ids), "rejected": len(self.rejected),
                "rejected_images": sorted(self.rejected, key=lambda r: r["image_id"]),
                "teacher_nodes": sorted(self.nodes),
                "diagnostics": {"class_pixel_share": dict(zip(self.names, share)),
                                "confidence_histogram": self.hist.tolist() if self.ids else [],
                                "confidence_bins": self.conf_bins}}
