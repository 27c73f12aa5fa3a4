"""torch.compile for pre-training: the repeated units of the model, one graph per input shape."""

from __future__ import annotations

from timm.models.swin_transformer import SwinTransformerBlock
from timm.models.vision_transformer import Block
from torch import nn

from repre.models.decoder import Decoder

UNITS = (Block, SwinTransformerBlock, Decoder)  # what is compiled: transformer blocks and the RePre decoder


def compile_blocks(model: nn.Module) -> None:
    """torch.compile, in place, every transformer block (online and momentum encoders) and the decoder: the
    repeated units, so one graph serves all blocks; `Module.compile` leaves parameter names unchanged.

    Static shapes: each input shape (DINO's global and local crops, Swin's stages and shifted windows) gets its
    own graph. Dynamo's default would make the second shape symbolic: slower kernels, and on a CPU minutes of
    compiling for a Swin block. The run raises Dynamo's limit of graphs per unit while it trains
    (`repre.core.runtime.run_settings`); torch >= 2.5 shares a graph between the instances of a block, older
    versions may run blocks past the limit uncompiled."""
    for module in model.modules():
        if isinstance(module, UNITS):
            module.compile(dynamic=False)
