"""Prompt-following metric on a reward whose scores are known."""

import torch

from rglcd.evaluate import image_grid, prompt_following


class TableReward(torch.nn.Module):
    def __init__(self, table):
        super().__init__()
        self.table = torch.tensor(table, dtype=torch.float32)

    def score_matrix(self, images, prompts):
        return self.table


def test_prompt_following_counts_pairwise_wins():
    # image 0 beats both other prompts, image 1 beats one of two, image 2 none.
    table = [[5.0, 1.0, 2.0], [3.0, 2.0, 1.0], [9.0, 9.0, 0.0]]
    res = prompt_following(TableReward(table), torch.zeros(3, 3, 4, 4), ["a", "b", "c"])
    assert abs(res["win_rate"] - (1.0 + 0.5 + 0.0) / 3) < 1e-6
    assert abs(res["top1"] - 1 / 3) < 1e-6
    assert abs(res["reward"] - (5 + 2 + 0) / 3) < 1e-6


def test_image_grid_layout():
    imgs = torch.zeros(5, 3, 4, 4)
    imgs[4] = 1
    grid = image_grid(imgs, nrow=4, pad=1)
    assert grid.shape == (2 * 5 + 1, 4 * 5 + 1, 3)
    assert (grid[6:10, 1:5] == 255).all() and (grid[1:5, 1:5] == 0).all()
