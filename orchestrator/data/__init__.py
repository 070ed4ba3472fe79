"""Stage: datasets. Import the submodule you need (nothing is imported here):

- `shapes`: the generated `shapes` benchmark (ShapesSpec, generate_shapes, ensure_shapes, vocabularies).
- `render`: drawing of one `shapes` scene (no I/O); `pascal_vocab`: Pascal VOC's prompt vocabulary.
- `voc`: reading the UniMatch/SemiOVS layout (SegDataset, split files, OOD corpora).
- `check`: `check_dataset`, a read-only scan for broken files, size mismatches, bad labels and duplicates.
- `mixing`: the seeded, nested subset of the OOD corpus a run may use.
- `plan`: a run's files (labeled split, unlabeled pool, val, OOD corpus) and vocabularies.
"""
