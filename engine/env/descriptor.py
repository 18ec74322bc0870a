"""A CLIP image tower for data sets of a few hundred tiles (``--clip-arch lsdm-clip-d``).

With 120 training tiles, the from-scratch ViT of ``lsdm-clip-s`` (4 M image parameters) does not align its
images with their descriptions: held-out top-5 retrieval 0.133 against chance 0.167 on the 150-cell city of
issue 18. Here the image side is a hand-made, frozen descriptor of colour and texture statistics, standardised
by the training tiles, and a small trainable head (0.06 M parameters) maps it into CLIP's joint space; the text
tower, the temperature and the loss (Eq. 8) are open_clip's as before. Measured in docs/results.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
WIDTH = 2 * (3 + 3 + 3 * len(QUANTILES) + 4) + 64  # tile_descriptor's output: 114


def tile_descriptor(rgb: torch.Tensor) -> torch.Tensor:
    """Colour and texture statistics of tiles, (N, 3, S, S) in [0, 1] -> (N, WIDTH), none learned: at full
    and at half resolution, per channel the mean, spread and quantiles, and the luminance gradient's mean,
    spread, median and 90th percentile; a 4x4x4 colour histogram (square-rooted). All are statistics of the
    whole tile: a flip or a quarter turn (aerial tiles have no orientation) moves only the gradient's ones, by
    its one-pixel differences."""
    levels = torch.tensor(QUANTILES, dtype=rgb.dtype)
    features = []
    for image in (rgb, F.avg_pool2d(rgb, 2)):
        flat = image.flatten(2)
        features += [flat.mean(2), flat.std(2), torch.quantile(flat, levels, dim=2).permute(1, 2, 0).flatten(1)]
        luminance = 0.299 * image[:, 0] + 0.587 * image[:, 1] + 0.114 * image[:, 2]
        dx = luminance[:, :-1, 1:] - luminance[:, :-1, :-1]
        dy = luminance[:, 1:, :-1] - luminance[:, :-1, :-1]
        gradient = (dx**2 + dy**2).sqrt().flatten(1)
        features += [gradient.mean(1, keepdim=True), gradient.std(1, keepdim=True)]
        features.append(torch.quantile(gradient, torch.tensor([0.5, 0.9], dtype=rgb.dtype), dim=1).T)
    bins = (rgb.clamp(0, 1) * 3.999).floor().long()  # 4 levels per channel
    code = (bins[:, 0] * 16 + bins[:, 1] * 4 + bins[:, 2]).flatten(1)
    features.append(F.one_hot(code, 64).to(rgb.dtype).mean(1).sqrt())
    return torch.cat(features, 1)


class DescriptorTower(torch.nn.Module):
    """``tile_descriptor`` of the (normalised) pixels open_clip passes, standardised by the training tiles'
    statistics (buffers, saved with the weights), then a two-layer head into the joint space."""

    pixel_mean: torch.Tensor
    pixel_std: torch.Tensor
    feature_mean: torch.Tensor
    feature_std: torch.Tensor

    def __init__(self, embed_dim: int, *, mean: tuple[float, ...], std: tuple[float, ...], hidden: int = 256) -> None:
        super().__init__()
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("pixel_std", torch.tensor(std).view(1, 3, 1, 1))
        self.register_buffer("feature_mean", torch.zeros(WIDTH))
        self.register_buffer("feature_std", torch.ones(WIDTH))
        self.head = torch.nn.Sequential(
            torch.nn.Linear(WIDTH, hidden), torch.nn.GELU(), torch.nn.Dropout(0.1), torch.nn.Linear(hidden, embed_dim)
        )

    def describe(self, pixels: torch.Tensor) -> torch.Tensor:
        return tile_descriptor((pixels * self.pixel_std + self.pixel_mean).clamp(0, 1))

    def fit_standardiser(self, pixels: torch.Tensor) -> None:
        """Set the descriptor's standardisation from the training tiles (normalised pixels)."""
        with torch.no_grad():
            features = self.describe(pixels)
            self.feature_mean.copy_(features.mean(0))
            self.feature_std.copy_(features.std(0).nan_to_num(1.0).clamp_min(1e-6))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.head((self.describe(pixels) - self.feature_mean) / self.feature_std)
