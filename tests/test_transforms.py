import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from hardcl_lightning.data.transforms import MultiViewTransform, ViewSpec, view_specs_for


def test_crop_boxes_are_the_crops_taken():
    """With every pixel op off, each view equals the resized crop of its recorded box."""
    g = torch.Generator().manual_seed(0)
    img = (torch.rand(3, 40, 50, generator=g) * 255).to(torch.uint8)
    spec = ViewSpec(16, crop_scale=(0.1, 0.9), flip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0)
    t = MultiViewTransform([spec] * 5, mean=(0, 0, 0), std=(1, 1, 1))
    torch.manual_seed(3)
    views, boxes = t(img)
    assert boxes.shape == (5, 4)
    for v, (x0, y0, x1, y1) in zip(views, boxes.tolist()):
        assert 0 <= x0 < x1 <= 50 and 0 <= y0 < y1 <= 40
        # views are cut from the PIL image (the pipeline's working format)
        ref = TF.resized_crop(TF.to_pil_image(img), int(y0), int(x0), int(y1 - y0), int(x1 - x0), [16, 16], antialias=True)
        assert torch.allclose(v, TF.pil_to_tensor(ref).float() / 255, atol=1e-6)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (40 * 50)
    assert ((areas > 0.09) & (areas < 0.91)).all()


def test_recipe_view_counts_and_sizes():
    specs = view_specs_for("dino", num_views=2, image_size=32, num_local_crops=3, local_crop_size=12)
    assert [s.size for s in specs] == [32, 32, 12, 12, 12]
    assert specs[0].blur_prob == 1.0 and specs[1].solarize_prob == 0.2  # DINO's two global streams
    t = MultiViewTransform(specs, (0.5,) * 3, (0.5,) * 3)
    views, boxes = t(torch.zeros(3, 32, 32, dtype=torch.uint8))
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 12, 12)] * 3 and boxes.shape == (5, 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(augmentation="simclrr"), "simclrr"),
        (dict(num_views=0), "num_views"),
        (dict(crop_scale=(0.9, 0.1)), "crop_scale"),
        (dict(blur_prob=1.5), "blur_prob"),
    ],
)
def test_bad_recipe_options_name_the_value(kwargs, match):
    base = dict(augmentation="simclr", num_views=2, image_size=32)
    with pytest.raises(ValueError, match=match):
        view_specs_for(**{**base, **kwargs})
