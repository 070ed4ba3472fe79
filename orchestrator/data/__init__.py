"""Datasets. Import the submodule you need (nothing is imported here, so `mixing` stays numpy-only):

- `shapes`: the generated `shapes` benchmark (ShapesSpec, generate_shapes, ensure_shapes, vocabularies).
- `voc`: reading the UniMatch/SemiOVS layout (SegDataset, split files, load_image/load_mask, OOD corpora).
- `mixing`: the OOD mixing plan (how many OOD images per unlabeled batch) and corpus subsampling.
- `check`: `check_dataset`, a read-only scan for broken files, size mismatches, bad labels and duplicates.
- `render`: drawing of one `shapes` scene (no I/O); `pascal_vocab`: Pascal VOC's prompt vocabulary.
"""
