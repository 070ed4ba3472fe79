"""Reading datasets in the UniMatch / SemiOVS layout, on small real files built here."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.data.pascal_vocab import PASCAL_VOC_VOCAB
from orchestrator.core.images import SampleError, load_image, load_mask
from orchestrator.core.masks import voc_palette
from orchestrator.data.voc import (DatasetError, SegDataset, list_ood_corpus, load_vocabulary, read_split_file,
                                   save_mask, write_split_file)
from orchestrator.core.errors import UserError

IDS = ["2007_000032", "2007_000039", "2007_000063", "2007_000068"]


def _voc(root: Path, ids=IDS) -> Path:
    """A tiny Pascal-VOC-like root: JPEG images, palette PNG masks with a 255 boundary, no classes.json."""
    rng = np.random.default_rng(0)
    (root / "JPEGImages").mkdir(parents=True)
    (root / "SegmentationClass").mkdir()
    for k, ident in enumerate(ids):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / f"JPEGImages/{ident}.jpg")
        mask = np.zeros((24, 32), np.uint8)
        mask[4:12, 5:20], mask[3, 5:20] = k + 1, 255
        save_mask(root / f"SegmentationClass/{ident}.png", mask)
    return root


def _pairs(ids):
    return [(f"JPEGImages/{i}.jpg", f"SegmentationClass/{i}.png") for i in ids]


def test_split_file_round_trip_is_unimatch_format(tmp_path):
    pairs = _pairs(IDS[:2]) + [("JPEGImages/x.jpg", None)]
    write_split_file(tmp_path / "s.txt", pairs)
    assert (tmp_path / "s.txt").read_text() == (
        "JPEGImages/2007_000032.jpg SegmentationClass/2007_000032.png\n"
        "JPEGImages/2007_000039.jpg SegmentationClass/2007_000039.png\nJPEGImages/x.jpg")
    assert read_split_file(tmp_path / "s.txt") == pairs
    (tmp_path / "bad.txt").write_text("a b c")
    with pytest.raises(DatasetError, match=r"bad.txt:1: expected .*3 columns"):
        read_split_file(tmp_path / "bad.txt")


def test_palette_mask_reads_as_indices_not_colours(tmp_path):
    root = _voc(tmp_path / "voc")
    with Image.open(root / "SegmentationClass/2007_000039.png") as im:
        assert im.mode == "P" and tuple(im.getpalette()[:6]) == voc_palette()[:6]
    mask = load_mask(root / "SegmentationClass/2007_000039.png")
    assert mask.dtype == np.uint8 and mask.shape == (24, 32)
    assert set(np.unique(mask)) == {0, 2, 255}
    assert voc_palette()[3:6] == (128, 0, 0)  # VOC colour of class 1 (aeroplane)
    img = load_image(root / "JPEGImages/2007_000039.jpg")
    assert img.shape == (24, 32, 3) and img.dtype == np.uint8


def test_rgb_mask_is_rejected_with_reason(tmp_path):
    Image.new("RGB", (4, 4), (128, 0, 0)).save(tmp_path / "m.png")
    with pytest.raises(SampleError, match=r"m.png: mask mode is 'RGB'.*class indices"):
        load_mask(tmp_path / "m.png")


def test_truncated_or_missing_files_raise_sample_error(tmp_path):
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / "ok.jpg", quality=95)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(SampleError) as e:
        load_image(tmp_path / "cut.jpg")
    assert e.value.path == str(tmp_path / "cut.jpg") and "truncated" in e.value.reason.lower()
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(SampleError, match="cannot decode mask"):
        load_mask(tmp_path / "junk.png")
    with pytest.raises(SampleError, match="does not exist"):
        load_image(tmp_path / "nope.jpg")


def test_resolve_shapes_style_layout(tmp_path):
    root = _voc(tmp_path / "voc")
    write_split_file(root / "splits/2/labeled.txt", _pairs(IDS[:2]))
    write_split_file(root / "splits/2/unlabeled.txt", _pairs(IDS[2:3]))
    write_split_file(root / "splits/val.txt", _pairs(IDS[3:]))
    ds = SegDataset.resolve(root, 2)
    assert ds.split == "2" and len(ds.labeled) == 2 and len(ds.unlabeled) == 1 and len(ds.val) == 1
    img, mask = ds.labeled[0]
    assert Path(img).is_absolute() and img == str(root.resolve() / "JPEGImages/2007_000032.jpg")
    assert load_mask(mask).max() == 255


def test_resolve_semiovs_repo_layout_with_splits_dir(tmp_path):
    """SemiOVS keeps splits in the repo (splits/pascal/1_16/labeled.txt) and data under data/pascal."""
    root = _voc(tmp_path / "data/pascal")
    sdir = tmp_path / "SemiOVS/splits/pascal"
    write_split_file(sdir / "1_16/labeled.txt", _pairs(IDS[:1]))
    write_split_file(sdir / "1_16/unlabeled.txt", _pairs(IDS[1:3]))
    write_split_file(sdir / "val.txt", _pairs(IDS[3:]))
    ds = SegDataset.resolve(root, "1_16", splits_dir=sdir)
    assert [Path(m).name for _, m in ds.unlabeled] == ["2007_000039.png", "2007_000063.png"]
    with pytest.raises(DatasetError, match=r"1_8/labeled.txt.*Available splits under .*\['1_16'\]"):
        SegDataset.resolve(root, "1_8", splits_dir=sdir)
    with pytest.raises(DatasetError, match=r"names .*2007_000032.jpg, which does not exist.*data.root"):
        SegDataset.resolve(tmp_path, "1_16", splits_dir=sdir)  # wrong root: paths do not resolve


def test_missing_root_says_how_to_fix(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset root .*nowhere does not exist.*python run.py data synth.*data.root"):
        SegDataset.resolve(tmp_path / "nowhere", "16")
    assert issubclass(DatasetError, UserError)  # run.py prints it and exits 2


def test_ood_corpus_from_folder_list_file_or_folder_with_list(tmp_path):
    folder = tmp_path / "coco"
    folder.mkdir()
    for name in ["b.jpg", "a.PNG", "c.jpeg", "notes.txt"]:
        (folder / name).write_bytes(b"x")
    assert [Path(p).name for p, m in list_ood_corpus(folder)] == ["a.PNG", "b.jpg", "c.jpeg"]
    (tmp_path / "ood").mkdir()
    (tmp_path / "ood/list.txt").write_text("images/1.jpg labels/1.png\nimages/2.jpg")
    expected = [(str((tmp_path / "ood/images/1.jpg").resolve()), str((tmp_path / "ood/labels/1.png").resolve())),
                (str((tmp_path / "ood/images/2.jpg").resolve()), None)]
    assert list_ood_corpus(tmp_path / "ood/list.txt") == expected
    assert list_ood_corpus(tmp_path / "ood") == expected
    with pytest.raises(DatasetError, match="OOD corpus .*missing does not exist.*ood.corpus"):
        list_ood_corpus(tmp_path / "missing")


def test_vocabulary_from_classes_json_or_pascal_fallback(tmp_path):
    root = _voc(tmp_path / "voc")
    voc = load_vocabulary(root)
    assert voc is PASCAL_VOC_VOCAB and voc.num_classes == 21 and len(voc.background_concepts) == 151
    assert voc.names[0] == "background" and voc.classes[1].synonyms == ("airplane", "glider")
    (root / "classes.json").write_text('{"source": {}}')
    with pytest.raises(DatasetError, match=r"classes.json: cannot read vocabulary 'target'"):
        load_vocabulary(root)
