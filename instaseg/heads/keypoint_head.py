"""The keypoint head of Keypoint R-CNN: layers only. ``(R, C_in, 14, 14) -> (R, K, 56, 56)`` spatial logits.

The paper's head (Mask R-CNN, Sec. 5 and Fig. 4 of its appendix): eight 3x3 512-d convs with ReLU,
a 4x4 deconv of stride 2 to the ``K`` keypoint maps, then a bilinear x2 upsampling, so that 14 x 14
RoI features give 56 x 56 heatmaps. Detectron2 (``KRCNNConvDeconvUpsampleHead``) and torchvision
(``KeypointRCNNHeads`` + ``KeypointRCNNPredictor``) build the same layers; their weights rename onto
this module as:

* Detectron2 ``roi_heads.keypoint_head.conv_fcn{i}`` -> ``convs.{i - 1}`` (i = 1..8),
  ``roi_heads.keypoint_head.score_lowres`` -> ``score_lowres``;
* torchvision ``roi_heads.keypoint_head.{2 i}`` (a Sequential of conv, ReLU pairs) -> ``convs.{i}``,
  ``roi_heads.keypoint_predictor.kps_score_lowres`` -> ``score_lowres``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from instaseg.layers.fusion import to_channels_last

__all__ = ["KeypointHead"]


class KeypointHead(nn.Module):
    """``len(conv_dims)`` x (conv3x3 + ReLU), ConvTranspose 4x4 stride 2 to ``num_keypoints`` maps,
    bilinear upsampling by ``up_scale``.

    ``(R, C_in, S, S) -> (R, num_keypoints, 2 * up_scale * S, 2 * up_scale * S)`` logits (the
    defaults: 14 -> 56). Every weight, the deconv's included, starts from Kaiming normal with
    ``fan_out`` (Caffe2's MSRAFill) and every bias from 0, as in both peers.
    """

    def __init__(
        self, in_channels: int, num_keypoints: int, conv_dims: Sequence[int] = (512,) * 8, up_scale: int = 2
    ) -> None:
        super().__init__()
        convs = []
        channels = in_channels
        for dim in conv_dims:
            convs.append(nn.Conv2d(channels, dim, kernel_size=3, padding=1))
            channels = dim
        self.convs = nn.ModuleList(convs)
        # kernel 4, stride 2, padding 1: exactly twice the input size
        self.score_lowres = nn.ConvTranspose2d(channels, num_keypoints, kernel_size=4, stride=2, padding=1)
        self.num_keypoints = num_keypoints
        self.up_scale = up_scale
        for layer in [*self.convs, self.score_lowres]:
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = to_channels_last(x)
        for conv in self.convs:
            x = conv(x).relu_()  # in place: a conv's backward does not need its output
        x = self.score_lowres(x)
        return F.interpolate(x, scale_factor=float(self.up_scale), mode="bilinear", align_corners=False)
