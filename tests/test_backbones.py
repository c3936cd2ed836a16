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


@pytest.mark.parametrize("name", ["resnet18", "resnet_tiny"])
def test_zero_init_residual_makes_every_block_start_as_the_identity_plus_shortcut(name):
    """With zero_init_residual a block's residual branch outputs 0 at init, so a block without a
    downsample returns relu(x) = x for its (non-negative) input: checked on one such block."""
    torch.manual_seed(0)
    model, _ = build_backbone(name, cifar_stem=True, zero_init_residual=True)
    blocks = [m for m in model.modules() if type(m).__name__ == "BasicBlock"]
    assert blocks and all(float(b.bn2.weight.abs().sum()) == 0 for b in blocks)
    plain = next(b for b in blocks if b.downsample is None)
    x = torch.rand(2, plain.conv1.in_channels, 8, 8)
    plain.eval()
    assert torch.equal(plain(x), x)
    default, _ = build_backbone(name, cifar_stem=True)
    assert all(float(m.bn2.weight.abs().sum()) > 0 for m in default.modules() if type(m).__name__ == "BasicBlock")
