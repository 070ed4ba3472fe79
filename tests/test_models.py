"""Student models: output shapes at odd sizes, the need_fp contract, weight loading, error texts."""

import pytest
import torch
import torchvision

from trainables.models import ARCHS, build_student
from trainables.optim import param_groups


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module", params=ARCHS)
def student(request):
    torch.manual_seed(0)
    return request.param, build_student(request.param, 5)


def test_shapes_at_odd_size_with_and_without_fp(student):
    arch, model = student
    model.train()
    x = torch.randn(2, 3, 65, 49)  # batch 2: DeepLab's image-pooling BN needs >1 value in train mode
    logits = model(x)
    assert logits.shape == (2, 5, 65, 49), arch
    clean, fp = model(x, need_fp=True)
    assert clean.shape == fp.shape == (2, 5, 65, 49), arch
    assert not torch.allclose(clean, fp), f"{arch}: feature perturbation changed nothing"


def test_fp_clean_half_equals_plain_forward_in_eval_mode():
    torch.manual_seed(0)
    model = build_student("unet_small", 4, width=8).eval()
    x = torch.randn(3, 3, 33, 31)
    clean, fp = model(x, need_fp=True)
    torch.testing.assert_close(clean, model(x))
    assert not torch.allclose(fp, clean)


def test_fp_dropout_zero_gives_identical_views():
    torch.manual_seed(0)
    model = build_student("unet_small", 4, width=8, fp_dropout=0.0).train()
    clean, fp = model(torch.randn(2, 3, 32, 32), need_fp=True)
    torch.testing.assert_close(clean, fp)


def test_unet_width_scales_parameters():
    small = sum(p.numel() for p in build_student("unet_small", 3, width=8).parameters())
    big = sum(p.numel() for p in build_student("unet_small", 3, width=16).parameters())
    assert 3 * small < big


def test_unknown_arch_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown model arch 'resnet9'.*unet_small.*deeplabv3plus_r101"):
        build_student("resnet9", 3)


def test_pretrained_backbone_loaded_from_local_file(tmp_path):
    ref = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        ref.layer1[0].conv1.weight.fill_(0.123)
    path = tmp_path / "r50.pth"
    torch.save(ref.state_dict(), path)  # includes fc.*, which the student must drop
    model = build_student("deeplabv3plus_r50", 3, pretrained_backbone=str(path))
    torch.testing.assert_close(model.backbone.layer1[0].conv1.weight, ref.layer1[0].conv1.weight)


def test_pretrained_backbone_wrong_depth_or_missing_file(tmp_path):
    path = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="does not match the ResNet backbone"):
        build_student("deeplabv3plus_r101", 3, pretrained_backbone=str(path))
    with pytest.raises(FileNotFoundError, match="is not a file.*nothing is downloaded"):
        build_student("deeplabv3plus_r50", 3, pretrained_backbone=str(tmp_path / "nope.pth"))


def test_param_groups_split_backbone_and_head():
    model = build_student("unet_small", 3, width=8)
    groups = param_groups(model, 0.01, 10.0)
    assert [g["lr"] for g in groups] == [0.01, pytest.approx(0.1)]
    backbone_ids = {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in groups[0]["params"]} == backbone_ids
    assert backbone_ids.isdisjoint(id(p) for p in groups[1]["params"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
