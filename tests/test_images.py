"""The one resize + centre crop: bit-identical to the copies it replaced in the shard loader and the CLIP rewards,
and close to PIL's crop-then-bicubic (the evaluator's reference folders before) on square images; grids."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from rglcd.data.shards import resize_center_crop
from rglcd.evaluate.score import iter_image_folder
from rglcd.images import save_grid
from rglcd.pixels import resize_and_center_crop
from rglcd.rewards.clip import OPENAI_MEAN, OPENAI_STD, clip_preprocess

SHAPES = [(20, 60, 10), (97, 64, 32), (8, 10, 16), (64, 64, 64), (300, 200, 224)]


def previous_crop(x, size, mode):
    """The hand-written copy that shards.py and clip.py each carried (before rglcd.images)."""
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    x = F.interpolate(x, size=new, mode=mode, align_corners=False, antialias=scale < 1)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return x[..., top: top + size, left: left + size]


@pytest.mark.parametrize("h,w,size", SHAPES)
def test_shard_and_clip_preprocessing_are_unchanged(h, w, size):
    rng = np.random.default_rng(h * w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1).float().unsqueeze(0) / 127.5 - 1
    assert torch.equal(resize_center_crop(image, size), previous_crop(x, size, "bilinear")[0].clamp(-1, 1))
    images = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1), torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    expected = (previous_crop(images, size, "bicubic").clamp(0, 1) - mean) / std
    assert torch.equal(clip_preprocess(images, size), expected)


def test_the_crop_keeps_the_centre_and_passes_gradients():
    images = torch.zeros(1, 3, 30, 90, requires_grad=True)
    with torch.no_grad():
        images[..., 30:60] = 1
    out = resize_and_center_crop(images, 15, "bilinear")
    assert out.shape == (1, 3, 15, 15) and (out[..., 1:-1] == 1).all() and (out[..., [0, -1]] > 0.5).all()
    out.sum().backward()
    assert images.grad[..., 30:60].abs().sum() > 0 and images.grad[..., :20].abs().sum() == 0


def test_reference_folders_match_pil_on_square_images(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((40, 80, 3), dtype=np.uint8)).save(tmp_path / "b.png")
    batch = next(iter_image_folder(tmp_path, 64))
    assert batch.dtype == torch.uint8 and batch.shape == (2, 3, 64, 64)
    pil = torch.from_numpy(np.array(Image.fromarray(pixels).resize((64, 64), Image.BICUBIC))).permute(2, 0, 1)
    assert (batch[0].int() - pil.int()).abs().max() <= 1  # rounding only
    assert (batch[1] == 0).all()


def test_save_grid_writes_the_grid(tmp_path):
    images = torch.rand(3, 3, 4, 4)
    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=2)
    grid = np.array(Image.open(path))
    assert grid.shape == (2 * 6 + 2, 2 * 6 + 2, 3)
    assert np.array_equal(grid[2:6, 2:6], (images[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
