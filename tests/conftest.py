import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture
def image_folder(tmp_path):
    """A tiny ImageFolder tree (3 classes x 6 JPEGs, 40 px) made with PIL."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(3):
            d = tmp_path / split / f"class_{c}"
            d.mkdir(parents=True)
            for i in range(6):
                arr = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8)
                arr[..., c] = 255  # classes differ in one channel
                Image.fromarray(arr.numpy()).save(d / f"{i}.jpg")
    return tmp_path
