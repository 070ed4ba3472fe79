"""Student segmenters: a tiny CPU U-Net and DeepLabV3+ on torchvision ResNets, and the student registry.

`model.arch` names a registered student (`STUDENTS`: name → import path) or a plug-in's import path
`package.module:Class`; either way the class is constructed as Class(num_classes, config: ModelConfig)
(`build_student_from_config`; the protocol is in orchestrator/core/plugins.py and docs/extending.md).
Every built-in student splits into `backbone` (encoder; its parameters get the base lr, see optim.py) and a decoder,
and shares one forward contract (docs/method.md §4):

    model(x)                 -> logits [B, K, H, W] at input resolution
    model(x, need_fp=True)   -> (logits, logits_fp)

`need_fp` is UniMatch's feature perturbation: the decoder runs once on the clean encoder features and on a
Dropout2d copy of them, stacked along the batch, so clean and perturbed logits come from one pass.
No weights are downloaded: DeepLab backbones load a local state-dict file or start random.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from orchestrator.core.config import STUDENT_ARCHS, ModelConfig
from orchestrator.core.plugins import IMPORT_PATH_FORM, is_import_path, load_student_class

# Registered name → import path of a class that follows the student protocol. The names are the config's
# STUDENT_ARCHS (what model.arch validates against); a plug-in's model.arch is its import path instead.
STUDENTS: dict[str, str] = {
    "unet_small": "trainables.models:UNetSmall",
    "deeplabv3plus_r50": "trainables.models:DeepLabV3PlusR50",
    "deeplabv3plus_r101": "trainables.models:DeepLabV3PlusR101",
}
if tuple(STUDENTS) != STUDENT_ARCHS:   # the config validates against STUDENT_ARCHS; both must agree
    raise ImportError(f"student registry {tuple(STUDENTS)} != config STUDENT_ARCHS {STUDENT_ARCHS}")
ARCHS: tuple[str, ...] = tuple(STUDENTS)


def conv_bn_relu(cin: int, cout: int, *, stride: int = 1, dilation: int = 1, kernel: int = 3) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class Student(nn.Module):
    """Shared forward: encode -> (optionally perturb) -> decode -> upsample to the input size."""

    def __init__(self, fp_dropout: float) -> None:
        super().__init__()
        if not 0.0 <= fp_dropout < 1.0:
            raise ValueError(f"fp_dropout must be in [0, 1), got {fp_dropout}")
        self.fp_dropout = fp_dropout

    def encode(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def decode(self, feats: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, need_fp: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        size = x.shape[-2:]
        feats = self.encode(x)
        if need_fp:
            # Dropout is applied even in eval mode, as in UniMatch: FP is a requested perturbation, not
            # regularisation. One decoder pass over [clean; perturbed] keeps BN statistics shared.
            stacked = [torch.cat([f, F.dropout2d(f, self.fp_dropout, training=True)]) for f in feats]
            clean, perturbed = upsample(self.decode(stacked), size).chunk(2)
            return clean, perturbed
        return upsample(self.decode(feats), size)


def upsample(t: Tensor, size: torch.Size | tuple[int, int]) -> Tensor:
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=True)


# ---------------------------------------------------------------------------------------------------------
# unet_small: stride-2 stem, encoder at 1/2, 1/4, 1/8 with widths w, 2w, 4w; two skip-fusing decoder stages.
# Working at 1/2 resolution from the first layer is what makes it ~9x cheaper than a full-resolution
# 24/48/96 U-Net; logits are upsampled bilinearly, which costs little on blob-like shapes.
# ---------------------------------------------------------------------------------------------------------


class SmallEncoder(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.stem = conv_bn_relu(3, w, stride=2)
        self.down1 = nn.Sequential(conv_bn_relu(w, 2 * w, stride=2), conv_bn_relu(2 * w, 2 * w))
        self.down2 = nn.Sequential(conv_bn_relu(2 * w, 4 * w, stride=2), conv_bn_relu(4 * w, 4 * w))

    def forward(self, x: Tensor) -> list[Tensor]:
        c1 = self.stem(x)
        c2 = self.down1(c1)
        c3 = self.down2(c2)
        return [c1, c2, c3]


class UNetSmall(Student):
    """unet_small: width = model.width; model.pretrained_backbone = a state dict of its encoder (`backbone`)."""

    def __init__(self, num_classes: int, config: ModelConfig) -> None:
        super().__init__(config.fp_dropout)
        w = config.width
        self.backbone = SmallEncoder(w)
        self.fuse2 = conv_bn_relu(4 * w + 2 * w, 2 * w)
        self.fuse1 = conv_bn_relu(2 * w + w, w)
        self.classifier = nn.Conv2d(w, num_classes, 1)
        if config.pretrained_backbone:
            self.backbone.load_state_dict(torch.load(config.pretrained_backbone, map_location="cpu", weights_only=True))

    def encode(self, x: Tensor) -> list[Tensor]:
        return self.backbone(x)

    def decode(self, feats: list[Tensor]) -> Tensor:
        c1, c2, c3 = feats
        y = self.fuse2(torch.cat([upsample(c3, c2.shape[-2:]), c2], dim=1))
        y = self.fuse1(torch.cat([upsample(y, c1.shape[-2:]), c1], dim=1))
        return self.classifier(y)


# ---------------------------------------------------------------------------------------------------------
# DeepLabV3+ (output stride 16), layout of UniMatch's model/semseg/deeplabv3plus.py on torchvision ResNets.
# ---------------------------------------------------------------------------------------------------------


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int, rates: tuple[int, int, int] = (6, 12, 18)) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(cin, cout, kernel=1)] + [conv_bn_relu(cin, cout, dilation=r) for r in rates]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), conv_bn_relu(cin, cout, kernel=1))
        self.project = conv_bn_relu(5 * cout, cout, kernel=1)

    def forward(self, x: Tensor) -> Tensor:
        outs = [b(x) for b in self.branches]
        outs.append(F.interpolate(self.pool(x), size=x.shape[-2:], mode="bilinear", align_corners=True))
        return self.project(torch.cat(outs, dim=1))


class ResNetEncoder(nn.Module):
    """torchvision ResNet without avgpool/fc; returns (layer1, layer4) = (c1, c4)."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        ctor = {50: torchvision.models.resnet50, 101: torchvision.models.resnet101}[depth]
        net = ctor(weights=None, replace_stride_with_dilation=[False, False, True])
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c4 = self.layer4(self.layer3(self.layer2(c1)))
        return [c1, c4]


class DeepLabV3Plus(Student):
    """DeepLabV3+ on a ResNet of `depth` layers; model.pretrained_backbone = a torchvision ResNet state dict
    (model.width does not apply)."""

    depth = 50

    def __init__(self, num_classes: int, config: ModelConfig) -> None:
        super().__init__(config.fp_dropout)
        self.backbone = ResNetEncoder(self.depth)
        self.head = ASPP(2048, 256)
        self.reduce = conv_bn_relu(256, 48, kernel=1)
        self.fuse = nn.Sequential(conv_bn_relu(256 + 48, 256), conv_bn_relu(256, 256))
        self.classifier = nn.Conv2d(256, num_classes, 1)
        if config.pretrained_backbone:
            load_backbone_weights(self.backbone, config.pretrained_backbone)

    def encode(self, x: Tensor) -> list[Tensor]:
        return self.backbone(x)

    def decode(self, feats: list[Tensor]) -> Tensor:
        c1, c4 = feats
        c4 = upsample(self.head(c4), c1.shape[-2:])
        return self.classifier(self.fuse(torch.cat([self.reduce(c1), c4], dim=1)))


class DeepLabV3PlusR50(DeepLabV3Plus):
    depth = 50


class DeepLabV3PlusR101(DeepLabV3Plus):
    depth = 101


def load_backbone_weights(encoder: nn.Module, path: str) -> None:
    """Load an ImageNet ResNet state dict (torchvision key names; `fc.*` and a `module.` prefix are dropped)."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"pretrained_backbone={path!r} is not a file. Give a local torchvision ResNet state dict "
            "(e.g. resnet101-*.pth saved with torch.save(model.state_dict())) or '' for random init; "
            "nothing is downloaded at run time."
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # the ImageNet classifier
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path} does not match the ResNet backbone: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). Use a torchvision ResNet of the same depth."
        )


def student_class(arch: str) -> type:
    """The class model.arch names: registered, or a plug-in's import path (a ConfigError naming model.arch if it
    cannot be imported or does not follow the student protocol)."""
    return load_student_class(STUDENTS.get(arch, arch), "model.arch")


def build_student_from_config(num_classes: int, config: ModelConfig, *, read_backbone: bool = True) -> nn.Module:
    """The student of the model.* config: its class constructed as Class(num_classes, config).

    `read_backbone=False` clears config.pretrained_backbone first: for a student whose weights are loaded next
    (a saved student, a checkpoint), so that no backbone initialisation file is read."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not read_backbone and config.pretrained_backbone:
        config = dataclasses.replace(config, pretrained_backbone="")
    cls = student_class(config.arch)
    model = cls(num_classes, config)
    if not isinstance(model, nn.Module):   # a class may build something else in __new__
        raise TypeError(f"model.arch={config.arch}: {cls.__name__}(num_classes, config) returned a "
                        f"{type(model).__name__}, not a torch.nn.Module (docs/extending.md)")
    return model


def build_student(
    arch: str, num_classes: int, *, width: int = 16, fp_dropout: float = 0.5, pretrained_backbone: str = ""
) -> nn.Module:
    """Build a student by name (or import path) from loose settings: build_student_from_config of a ModelConfig
    holding them. `width` only affects unet_small, `pretrained_backbone` the built-ins' encoders."""
    if arch not in STUDENTS and not is_import_path(arch):
        raise ValueError(f"unknown model arch {arch!r}; valid archs: {', '.join(ARCHS)}, or a plug-in's import path "
                         f"{IMPORT_PATH_FORM}")
    config = ModelConfig(arch=arch, width=width, fp_dropout=fp_dropout, pretrained_backbone=pretrained_backbone)
    return build_student_from_config(num_classes, config)
