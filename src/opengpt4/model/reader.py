"""The image reader: a small CNN that writes what an image holds as a line of text.

The LM copies a word it is given (with the answer written after the image, the shipped model
answered 0.89 of the shape and 0.85 of the chart questions; with the caption, 0.94 of the OCR
ones), but the projector's image tokens do not carry objects' shapes, bars' values or letters to
the answer within stage 2's steps (docs/findings/vision.md). So the image is also *read*, as
document-VQA systems feed OCR text beside the image and DeepSeek-VL pairs a low-resolution encoder
with a high-resolution one for text: the reader sees the full-resolution pixels and fills a fixed
number of slots, one word each from a closed vocabulary, in one pass (no decoding loop):

    ["top left:", "orange", "triangle.", "top right:", "nothing.", "", ...] -> "top left: orange triangle. top right: nothing."
    ["word:", "Z", "##U", "##G", "##E", "##.", ...]                        -> "word: ZUGE."

An empty slot is skipped and "##" glues a word to the one before it (WordPiece's convention), so
any text of up to `slots` words reads back. The line goes into the prompt right after the image's
placeholders (Tokenizer.render_chat's `read_image`): the LM sees the image tokens and the reading.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from opengpt4.config import ReaderConfig

GLUE = "##"


def join_words(words: Sequence[str]) -> str:
    """Slot words -> text: empty slots skipped, a "##" word glued to the one before it."""
    text = ""
    for w in words:
        if not w:
            continue
        if w.startswith(GLUE):
            text += w[len(GLUE):]
        else:
            text += (" " if text else "") + w
    return text


class ImageReader(nn.Module):
    """Pixels (N, 3, S, S), normalised as for the ViT -> slot logits (N, slots, len(words)).

    Convolutions halve the image down to an 8x8 map, then an MLP over the whole flattened map
    gives every slot its word: a slot's meaning (the top-left object's colour, a word's third
    letter) is a place in the image, which the flattened map keeps."""

    def __init__(self, cfg: ReaderConfig, image_size: int) -> None:
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        c_in, side = 3, image_size
        for i, c in enumerate(cfg.channels):
            stride = 1 if i == 0 else 2
            # GroupNorm, not BatchNorm: no running statistics, so train and eval agree and a checkpoint's
            # parameters are the whole reader.
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1), nn.GroupNorm(min(8, c), c), nn.GELU()]
            c_in, side = c, (side + stride - 1) // stride
        self.conv = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(c_in * side * side, cfg.hidden), nn.GELU(),
                                  nn.Dropout(cfg.dropout), nn.Linear(cfg.hidden, cfg.slots * len(cfg.words)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        n = len(pixels)
        return self.head(self.conv(pixels)).view(n, self.cfg.slots, len(self.cfg.words))

    @torch.no_grad()
    def read(self, pixels: torch.Tensor) -> list[str]:
        """Each image's reading (argmax per slot), as text."""
        was_training = self.training
        self.eval()
        weight = self.head[1].weight
        ids = self(pixels.to(weight.device, weight.dtype)).argmax(-1).tolist()
        self.train(was_training)
        return [join_words([self.cfg.words[i] for i in row]) for row in ids]
