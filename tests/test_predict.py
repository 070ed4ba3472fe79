"""`run.py predict` end to end on a real local Ray: a real (tiny, untrained) student file, real image files
(two sizes, a subfolder, broken ones), the CLI called in-process. And every user mistake: exit 2, one
`error:` line naming the thing, nothing written."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from orchestrator.cli import main
from orchestrator.core.masks import voc_palette

CLASSES = ["background", "disk", "square", "triangle", "cross", "ring"]   # the embedded benchmark's
SIZES = {"a.jpg": (32, 32), "b.png": (48, 40), "sub/c.jpg": (32, 32), "sub/deep/d.png": (48, 40)}   # (W, H)
BROKEN = {"empty.png": b"", "cut.jpg": None}   # None: a truncated JPEG


@pytest.fixture(scope="module")
def student_file(tmp_path_factory) -> Path:
    import torch

    from orchestrator.core.config import build_config, flatten
    from trainables.models import build_student
    from trainables.student_file import make_package

    torch.manual_seed(0)
    model = build_student("unet_small", len(CLASSES), width=4)
    package = make_package(model, flatten(build_config({"model.width": 4})), CLASSES, epoch=1,
                           metrics={"val_miou": 1.0})
    path = tmp_path_factory.mktemp("student") / "model.pt"
    torch.save(package, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for rel, (w, h) in SIZES.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / rel)
    whole = folder / "whole.jpg"
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(whole)
    (folder / "cut.jpg").write_bytes(whole.read_bytes()[:200])
    whole.unlink()
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image: not listed")
    return folder


def predict(capsys, *args) -> tuple[int, str, str]:
    code = main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def leftovers(out: Path) -> list[str]:
    return [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


def check_mask(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as mask:
        assert mask.mode == "P" and mask.size == size
        assert tuple(mask.getpalette()[:3 * len(CLASSES)]) == voc_palette()[:3 * len(CLASSES)]
        assert np.asarray(mask).max() < len(CLASSES)


def test_a_folder_gives_masks_overlays_confidence_and_lists_the_broken_files(ray_session, student_file, images,
                                                                            tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, stderr = predict(capsys, "--model", student_file, "--images", images, "--out", out,
                                   "--overlays", "--confidence", "--batch-size", 3)
    assert code == 0, stderr
    printed = json.loads(stdout.strip().splitlines()[-1])
    assert (printed["images"], printed["predicted"], printed["broken"]) == (6, 4, 2)
    assert "predicting on 1 actor(s): 6/6 image" in stderr   # the progress goes to stderr
    assert "Starting execution of Dataset" not in stderr   # Ray Data's own lines: in its log file only
    for rel, size in SIZES.items():
        name = Path(rel).with_suffix(".png")
        check_mask(out / "masks" / name, size)
        with Image.open(out / "overlays" / name) as overlay:   # image | mask, side by side
            assert overlay.mode == "RGB" and overlay.size == (2 * size[0], size[1])
        with Image.open(out / "confidence" / name) as conf:
            values = np.asarray(conf)
            assert conf.mode == "L" and conf.size == size
            assert values.min() >= 255 // len(CLASSES)   # the winner's probability is at least 1/K
    assert sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png")) == \
        sorted(Path(rel).with_suffix(".png").as_posix() for rel in SIZES)   # nothing for broken files
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["model"] == str(student_file) and doc["class_names"] == CLASSES
    assert (doc["images"], doc["predicted"], doc["broken"]) == (6, 4, 2)
    assert {Path(b["file"]).name for b in doc["broken_files"]} == set(BROKEN)
    assert all(b["reason"] for b in doc["broken_files"])
    assert sum(doc["class_pixels"].values()) == sum(w * h for w, h in SIZES.values())
    assert doc["outputs"] == ["masks", "overlays", "confidence"] and doc["images_per_s"] > 0
    assert leftovers(out) == []


def test_a_list_file_replaces_an_out_folder_with_overwrite(ray_session, student_file, images, tmp_path, capsys):
    listing = images / "list.txt"
    listing.write_text(f"a.jpg\n\nsub/c.jpg\n{images / 'b.png'}\n{images / 'sub' / 'deep' / 'd.png'}\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.new("RGB", (40, 24)).save(outside / "a.jpg")   # outside the list's folder: named by its file name
    with listing.open("a") as f:
        f.write(f"{outside / 'a.jpg'}\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("replaced")
    code, stdout, stderr = predict(capsys, "--model", student_file, "--images", listing, "--out", out,
                                   "--overwrite", "--quiet")
    assert code == 0, stderr
    assert stdout.count("\n") == 1 and json.loads(stdout)["predicted"] == 5   # --quiet: the JSON only
    assert stderr == ""
    masks = sorted(p.relative_to(out / "masks").as_posix() for p in (out / "masks").rglob("*.png"))
    assert masks == ["a-1.png", "a.png", "b.png", "sub/c.png", "sub/deep/d.png"]
    check_mask(out / "masks" / "a-1.png", (40, 24))
    assert not (out / "old.txt").exists() and not (out / "overlays").exists()
    assert leftovers(out) == []


def vocabulary_root(tmp_path: Path) -> Path:
    root = tmp_path / "voc"
    root.mkdir()
    names = ["background", "cat", "dog"]
    (root / "classes.json").write_text(json.dumps({"target": {"classes": [{"name": n} for n in names]}}))
    return root


@pytest.mark.parametrize("case, message", [
    ("missing model", "model '{tmp}/nope.pt' does not resolve: no such file or folder"),
    ("unknown model id", "model 'models:/m-doesnotexist' does not resolve in sqlite:///"),
    ("other vocabulary", "is a model of another vocabulary"),
    ("non-empty out", "already exists and is not empty. Fix: pass --overwrite"),
    ("missing images", "--images {tmp}/none: no such folder or list file"),
    ("no images", "holds no images"),
])
def test_mistakes_exit_2_with_one_line_and_write_nothing(student_file, images, tmp_path, capsys, case, message):
    out = tmp_path / "out"
    args = {"--model": student_file, "--images": images, "--out": out,
            "--tracking-uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    extra = []
    if case == "missing model":
        args["--model"] = tmp_path / "nope.pt"
    elif case == "unknown model id":
        args["--model"] = "models:/m-doesnotexist"
    elif case == "other vocabulary":
        extra = ["--data", vocabulary_root(tmp_path)]
    elif case == "non-empty out":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "missing images":
        args["--images"] = tmp_path / "none"
    elif case == "no images":
        args["--images"] = tmp_path / "empty"
        (tmp_path / "empty").mkdir()
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    code, stdout, stderr = predict(capsys, *[x for kv in args.items() for x in kv], *extra)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert message.format(tmp=tmp_path) in errors[0]
    assert stdout == ""
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before and leftovers(out) == []
    if case == "other vocabulary":   # both class lists are named
        assert "'disk'" in errors[0] and "'cat'" in errors[0]


def test_output_names_are_relative_png_paths_made_unique():
    from orchestrator.models.predict_inputs import unique_names

    assert unique_names(["a.jpg", "a.png", "sub/a.jpeg", "a.JPG", "x.y.jpg"]) == \
        ["a.png", "a-1.png", "sub/a.png", "a-2.png", "x.y.png"]


def test_a_list_entry_with_dots_cannot_name_a_file_outside_out(tmp_path):
    from orchestrator.models.predict_inputs import list_inputs

    (tmp_path / "lists").mkdir()
    listing = tmp_path / "lists" / "l.txt"
    listing.write_text("../up.jpg\nhere.jpg\n")
    assert [i.name for i in list_inputs(listing)] == ["up.png", "here.png"]
    assert list_inputs(listing)[0].path == str(tmp_path / "up.jpg")


def test_an_out_folder_inside_the_images_is_not_read_back_and_one_holding_them_is_refused(tmp_path):
    from orchestrator.core.errors import UserError
    from orchestrator.models.predict_inputs import list_inputs

    for rel in ("a.jpg", "out/masks/a.png", ".out.tmp-1234abcd/masks/a.png"):   # a previous run's output
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel)
    assert [i.name for i in list_inputs(tmp_path, tmp_path / "out")] == ["a.png"]
    with pytest.raises(UserError, match=r"--out .* holds 3 of the input images .* Fix: pass an --out outside"):
        list_inputs(tmp_path, tmp_path)   # --overwrite would delete them
