"""The pure decisions of `run.py predict`, taken before Ray starts: which images, under which output names,
whether the output folder may be written, whether the model fits the dataset's classes and the actor pool
fits the cluster, and the summary written last. No Ray, no model; every refusal is one UserError naming the
flag or file and the fix.
"""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from orchestrator.core.errors import UserError
from orchestrator.data.voc import IMAGE_EXTENSIONS

SUMMARY_FILE = "predictions.json"
MASKS, OVERLAYS, CONFIDENCE = "masks", "overlays", "confidence"   # the output folder's subfolders


@dataclass(frozen=True)
class InputImage:
    path: str    # absolute path of the image to read
    name: str    # its output name, relative and ending in .png: masks/<name>, overlays/<name>, ...


def list_inputs(images: str | Path, out: str | Path | None = None) -> list[InputImage]:
    """--images: a folder (searched recursively) or a list file (one path a line) -> the inputs, each with a
    unique output name. An --out folder inside the image folder (and its temp folders) is not searched, so
    a rerun never reads its own masks back as input; images inside --out are refused (replacing --out would
    delete them)."""
    source = Path(images).expanduser()
    out_path = Path(out).expanduser().resolve() if out else None
    if not source.exists():
        raise UserError(f"--images {images}: no such folder or list file. Fix: pass a folder of "
                        f"{'/'.join(IMAGE_EXTENSIONS)} images or a text file listing image paths, one a line.")
    if source.is_dir():
        found = _images_in_folder(source.resolve(), out_path)
    elif source.suffix.lower() in IMAGE_EXTENSIONS:
        raise UserError(f"--images {images} is one image, not a folder or list file. Fix: pass its folder, or a "
                        f"list file naming it.")
    else:
        found = _images_in_list(source.resolve(), images)
    if not found:
        raise UserError(f"--images {images} holds no images ({'/'.join(IMAGE_EXTENSIONS)}, searched recursively)"
                        f" or lists none. Fix: point it at the images.")
    inside = [path for path, _ in found if out_path and path.is_relative_to(out_path)]
    if inside:
        raise UserError(f"--out {out} holds {len(inside)} of the input images (e.g. {inside[0]}): replacing it "
                        f"would delete them. Fix: pass an --out outside the images.")
    return [InputImage(str(path), name) for (path, _), name in zip(found, unique_names(rel for _, rel in found))]


def _images_in_folder(folder: Path, out: Path | None) -> list[tuple[Path, str]]:
    """(path, path relative to the folder) of every image below it, sorted by the relative path; an --out
    strictly inside the folder, and the hidden temp folders beside it, are skipped."""
    skip = out if out and out != folder and out.is_relative_to(folder) else None
    found = []
    for f in folder.rglob("*"):
        # a broken symlink is kept: it becomes a broken row with its reason, not a silent omission
        if not ((f.is_file() or f.is_symlink()) and f.suffix.lower() in IMAGE_EXTENSIONS):
            continue
        if skip and (f.is_relative_to(skip) or _in_temp_folder_of(f, skip)):
            continue
        found.append((f, f.relative_to(folder).as_posix()))
    return sorted(found, key=lambda item: item[1])


def _in_temp_folder_of(path: Path, out: Path) -> bool:
    """Whether `path` is inside one of --out's hidden siblings (`.<name>.tmp-*`, `.<name>.old-*`)."""
    return path.is_relative_to(out.parent) and \
        path.relative_to(out.parent).parts[0].startswith(f".{out.name}.")


def _images_in_list(list_file: Path, shown: str | Path) -> list[tuple[Path, str]]:
    """(path, name before .png) per non-blank line: relative paths are relative to the list file's folder and
    keep their relative path as name; a path outside that folder is named by its file name alone."""
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (UnicodeDecodeError, OSError) as err:
        raise UserError(f"--images {shown} cannot be read as a list file ({err}). Fix: pass a folder of images or "
                        f"a UTF-8 text file with one image path a line.") from None
    base, found = list_file.parent, []
    for line in lines:
        entry = line.strip()
        if not entry:
            continue
        path = Path(entry).expanduser()
        # normpath: `../x.jpg` must not keep its `..` into the output name (it would write outside --out)
        path = Path(os.path.normpath(path if path.is_absolute() else base / path))
        try:
            name = path.relative_to(base).as_posix()
        except ValueError:
            name = path.name
        found.append((path, name))   # a missing file is kept: it is listed as broken, the rest still run
    return found


def unique_names(relative_paths: Iterable[str]) -> list[str]:
    """Each path with its suffix replaced by .png; a name already taken gets -1, -2, ... before the suffix
    (`a.jpg` and `a.png` in one folder, or two listed files called `img.jpg` in different folders)."""
    taken: set[str] = set()
    names = []
    for rel in relative_paths:
        stem = PurePosixPath(rel).with_suffix("").as_posix()
        name, n = f"{stem}.png", 0
        while name in taken:
            n += 1
            name = f"{stem}-{n}.png"
        taken.add(name)
        names.append(name)
    return names


def check_out(out: str | Path, overwrite: bool) -> Path:
    """--out as an absolute path, refused when it is a file, a URI, or a non-empty folder without --overwrite."""
    if "://" in str(out):
        raise UserError(f"--out {out}: predictions are written to a folder, not a URI. Fix: pass a folder path.")
    path = Path(out).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {out} is a file, not a folder. Fix: pass a folder path (it is created).")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise UserError(f"--out {out} already exists and is not empty. Fix: pass --overwrite to replace it, or "
                        f"another --out.")
    return path


def temp_folder_for(out: Path) -> Path:
    """The hidden folder beside --out that everything is written into before one rename puts it in place."""
    return out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"


def check_vocabulary(model_uri: str, model_classes: list[str], data_root: str | Path | None) -> None:
    """With --data: the model must predict exactly the dataset's classes, in the same order."""
    if data_root is None:
        return
    from orchestrator.data.voc import load_vocabulary

    if not Path(data_root).expanduser().is_dir():
        raise UserError(f"--data {data_root}: no such folder. Fix: pass the dataset root (the folder holding "
                        f"classes.json), or leave --data out.")
    dataset_classes = load_vocabulary(Path(data_root).expanduser()).names
    if list(model_classes) != list(dataset_classes):
        raise UserError(f"model '{model_uri}' is a model of another vocabulary: it predicts {model_classes}, "
                        f"but --data {data_root} labels {dataset_classes}. Fix: pass a model trained on that "
                        f"dataset, or the --data it was trained on.")


def check_request(actors: int, gpus_per_actor: float, batch_size: int) -> None:
    if actors < 1:
        raise UserError(f"--actors {actors}: at least 1 actor is needed. Fix: pass --actors 1 or more.")
    if gpus_per_actor < 0:
        raise UserError(f"--gpus-per-actor {gpus_per_actor} is negative. Fix: pass 0 (CPU) or a share of a GPU.")
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: at least 1 image per call is needed. Fix: pass 1 or more.")


def check_pool(actors: int, cpus_per_actor: float, gpus_per_actor: float, cluster: dict[str, float]) -> None:
    """Refuse an actor pool this Ray can never start (it would wait forever for the missing CPUs or GPUs)."""
    cpus, gpus = cluster.get("CPU", 0.0), cluster.get("GPU", 0.0)
    if actors * gpus_per_actor > gpus:
        raise UserError(f"--actors {actors} × --gpus-per-actor {gpus_per_actor:g} needs {actors * gpus_per_actor:g}"
                        f" GPU(s); this Ray has {gpus:g}. Fix: fewer --actors, a smaller --gpus-per-actor, or 0 "
                        f"(CPU).")
    if actors * cpus_per_actor > cpus:
        raise UserError(f"--actors {actors} needs {actors * cpus_per_actor:g} CPU(s) ({cpus_per_actor:g} each); "
                        f"this Ray has {cpus:g}. Fix: pass --actors {max(1, int(cpus // cpus_per_actor))} or fewer.")


@dataclass
class PredictionTally:
    """What the rows streaming back from the actors add up to (counts, broken files, pixels per class)."""
    class_names: list[str]
    predicted: int = 0
    broken: list[dict[str, str]] = field(default_factory=list)   # {"file", "reason"}
    class_pixels: list[int] = field(init=False)

    def __post_init__(self):
        self.class_pixels = [0] * len(self.class_names)

    def add(self, name: str, path: str, error: str, class_pixels) -> None:
        if error:
            # SampleError's text starts with the path: keep the reason only, the path has its own field
            self.broken.append({"file": path, "reason": error.removeprefix(f"{path}: ")})
            return
        self.predicted += 1
        self.class_pixels = [a + int(b) for a, b in zip(self.class_pixels, class_pixels)]


def summary(model_uri: str, model_id: str | None, images: str | Path, inputs: int, tally: PredictionTally,
            outputs: list[str], seconds: float) -> dict[str, Any]:
    """The content of predictions.json (written last, in the output folder)."""
    return {
        "model": model_uri, "model_id": model_id, "class_names": tally.class_names, "images_source": str(images),
        "images": inputs, "predicted": tally.predicted, "broken": len(tally.broken),
        "broken_files": sorted(tally.broken, key=lambda b: b["file"]),
        "class_pixels": dict(zip(tally.class_names, tally.class_pixels)),
        "outputs": outputs, "seconds": round(seconds, 2),
        "images_per_s": round(inputs / seconds, 2) if seconds > 0 else 0.0,
    }
