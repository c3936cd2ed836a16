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


class _PooledNet(torch.nn.Module):
    """A user's own backbone without a feature_dim attribute: its width is measured."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, width, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


class _MapNet(torch.nn.Module):
    def forward(self, x):
        return x


@pytest.mark.parametrize(
    "name, kwargs, dim, cifar_stem",
    [
        ("resnet34", {}, 512, True),  # a torchvision name with no entry of ours
        ("mobilenet_v3_small", {}, 1024, False),  # classifier is a Sequential: its last Linear goes
        ("convnext_tiny", {"stochastic_depth_prob": 0.1}, 768, False),  # builder options pass through
        ("vit_b_32", {}, 768, False),  # the ViT is built for the training image size (64 here)
        ("googlenet", {}, 1024, False),  # no auxiliary heads: a plain tensor in training mode too
    ],
)
def test_any_torchvision_model_by_name_returns_features_of_its_classifier_width(name, kwargs, dim, cifar_stem):
    """The feature width is the removed classifier's input width, checked on a forward pass."""
    model, d = build_backbone(name, cifar_stem=cifar_stem, image_size=64, **kwargs)
    assert d == dim
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    assert isinstance(out, torch.Tensor) and out.shape == (2, dim)


def test_a_cifar_stem_on_a_torchvision_resnet_and_a_clear_error_where_there_is_no_such_stem():
    model, _ = build_backbone("resnext50_32x4d", cifar_stem=True)
    assert model.conv1.stride == (1, 1) and isinstance(model.maxpool, torch.nn.Identity)
    with pytest.raises(ValueError, match=r"cifar_stem.*'mobilenet_v3_small'"):
        build_backbone("mobilenet_v3_small", cifar_stem=True)


def test_a_torchvision_option_it_does_not_take_is_named():
    with pytest.raises(ValueError, match=r"'resnet34'.*widths"):
        build_backbone("resnet34", widths=(1, 2))


def test_timm_models_by_name():
    timm = pytest.importorskip("timm")
    model, d = build_backbone("timm:resnet18", cifar_stem=True)
    assert d == 512 and model.conv1.stride == (1, 1)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 512)
    model, d = build_backbone("timm:vit_tiny_patch16_224", img_size=32, patch_size=8)
    assert d == 192 and model(torch.randn(2, 3, 32, 32)).shape == (2, 192)
    assert timm.list_models("vit_tiny*")
    with pytest.raises(ValueError, match=r"'resnet19'.*did you mean"):
        build_backbone("timm:resnet19")


def test_an_nn_module_class_path_with_its_width_measured_or_read():
    model, d = build_backbone(f"{__name__}._PooledNet", image_size=16, width=5)
    assert d == 5 and model(torch.randn(3, 3, 16, 16)).shape == (3, 5)
    model, d = build_backbone("hardcl_lightning.backbones.TinyResNet", widths=(4, 8, 8, 8))
    assert d == 8  # its feature_dim attribute
    with pytest.raises(ValueError, match=r"_MapNet.*\[B, D\].*\(2, 3, 8, 8\)"):
        build_backbone(f"{__name__}._MapNet", image_size=8)
    with pytest.raises(ValueError, match="cannot be imported"):
        build_backbone("my_pkg.nets.MyNet")
    with pytest.raises(ValueError, match="not a torch.nn.Module"):
        build_backbone("collections.OrderedDict")


def test_a_typo_in_a_backbone_name_gets_the_nearest_names():
    with pytest.raises(ValueError, match=r"'resnet_tine'.*did you mean 'resnet_tiny'.*timm:<name>"):
        build_backbone("resnet_tine")


def test_a_method_trains_on_a_class_path_backbone():
    """The method's heads take the measured width, and a loss backpropagates into the user's module."""
    from hardcl_lightning.methods import SimCLR

    model = SimCLR(backbone=f"{__name__}._PooledNet", backbone_kwargs={"width": 6}, image_size=8, batch_size=4,
                   proj_hidden_dim=8, proj_output_dim=4)
    assert model.feature_dim == 6
    loss = model.training_loss(model.embed([torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)]))
    loss.backward()
    assert model.backbone.conv.weight.grad.abs().sum() > 0
