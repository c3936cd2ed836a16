import pytest
import torch

from hardcl_lightning.backbones import build_backbone


@pytest.mark.parametrize("name, dim", [("resnet18", 512), ("resnet_tiny", 128)])
def test_resnet_feature_dims_and_cifar_stem(name, dim):
    model, d = build_backbone(name, cifar_stem=True)
    assert d == dim
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_cifar_stem_keeps_resolution_in_the_stem():
    plain, _ = build_backbone("resnet18")
    cifar, _ = build_backbone("resnet18", cifar_stem=True)
    assert plain.conv1.stride == (2, 2) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)


def test_vit_accepts_other_input_sizes():
    model, d = build_backbone("vit_tiny", image_size=32, patch_size=8)
    assert d == 192
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 192)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 192)  # local crops: interpolated pos. embedding


def test_unknown_backbone_names_the_value_and_the_choices():
    with pytest.raises(ValueError, match=r"'resnet19'.*resnet18"):
        build_backbone("resnet19")
    with pytest.raises(ValueError, match="widthz"):
        build_backbone("resnet_tiny", widthz=(1, 2, 3, 4))
