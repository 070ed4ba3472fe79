"""Pascal VOC's vocabulary as SemiOVS prompts it (docs/method.md §6): 21 classes with synonym lists, plus 151
background concepts (the 60 COCO things outside VOC, then the 91 COCO-Stuff stuff classes) whose scores vote
for class 0. Used when a dataset root has no `classes.json` (real VOC as downloaded).

The concept names are COCO / COCO-Stuff's own; the exact strings in SemiOVS's JSON were not available, so small
spelling differences to the paper's prompts are possible (the set is the same).
"""
from __future__ import annotations

from orchestrator.core.vocab import ClassConcepts, Vocabulary

_VOC_CLASSES: tuple[tuple[str, ...], ...] = (
    ("background",),
    ("aeroplane", "airplane", "glider"),
    ("bicycle", "tricycle", "unicycle"),
    ("bird",),
    ("boat", "ship", "rowing boat", "pedalo"),
    ("bottle", "plastic bottle", "glass bottle", "feeding bottle"),
    ("bus", "minibus"),
    ("car", "van", "large family car", "realistic toy car"),
    ("cat", "domestic cat"),
    ("chair", "armchair", "deckchair"),
    ("cow",),
    ("dining table", "table for eating at"),
    ("dog", "domestic dog"),
    ("horse", "pony", "donkey", "mule"),
    ("motorbike", "moped", "scooter", "sidecar"),
    ("person", "people", "baby", "face"),
    ("potted plant", "indoor plant in a pot", "outdoor plant in a pot"),
    ("sheep",),
    ("sofa",),
    ("train", "train carriage"),
    ("tv", "monitor", "standalone screen"),
)

COCO_THINGS_NOT_IN_VOC: tuple[str, ...] = (
    "truck", "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "elephant", "bear", "zebra",
    "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball",
    "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "wine glass", "cup",
    "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli", "carrot", "hot dog",
    "pizza", "donut", "cake", "bed", "toilet", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave",
    "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
)

COCO_STUFF: tuple[str, ...] = tuple("""
banner blanket branch bridge building-other bush cabinet cage cardboard carpet ceiling-other ceiling-tile cloth
clothes clouds counter cupboard curtain desk-stuff dirt door-stuff fence floor-marble floor-other floor-stone
floor-tile floor-wood flower fog food-other fruit furniture-other grass gravel ground-other hill house leaves
light mat metal mirror-stuff moss mountain mud napkin net paper pavement pillow plant-other plastic platform
playingfield railing railroad river road rock roof rug salad sand sea shelf sky-other skyscraper snow solid-other
stairs stone straw structural-other table tent textile-other towel tree vegetable wall-brick wall-concrete
wall-other wall-panel wall-stone wall-tile wall-wood water-other waterdrops window-blind window-other wood
""".split())

PASCAL_VOC_VOCAB = Vocabulary(
    classes=tuple(ClassConcepts(c[0], tuple(c[1:])) for c in _VOC_CLASSES),
    background_concepts=COCO_THINGS_NOT_IN_VOC + COCO_STUFF,
)
