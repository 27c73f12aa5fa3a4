"""torch.compile for pre-training: the repeated units of the model, one graph per input shape."""

from __future__ import annotations

from torch import nn

from repre.models.decoder import Decoder


def units(model: nn.Module) -> list[nn.Module]:
    """What is compiled: every transformer block (the members of each `blocks` sequence, timm's layout for ViTs,
    Swin stages and their relatives) and the RePre decoder."""
    found = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "blocks" and isinstance(module, (nn.Sequential, nn.ModuleList)):
            found += list(module)
        elif isinstance(module, Decoder):
            found.append(module)
    return found


def compile_blocks(model: nn.Module) -> None:
    """torch.compile, in place, every transformer block (online and momentum encoders) and the decoder: the
    repeated units, so one graph serves all blocks; `Module.compile` leaves parameter names unchanged.

    Static shapes: each input shape (DINO's global and local crops, Swin's stages and shifted windows) gets its
    own graph. Dynamo's default would make the second shape symbolic: slower kernels, and on a CPU minutes of
    compiling for a Swin block. The run raises Dynamo's limit of graphs per unit while it trains
    (`repre.core.runtime.run_settings`); torch >= 2.5 shares a graph between the instances of a block, older
    versions may run blocks past the limit uncompiled."""
    for module in units(model):
        module.compile(dynamic=False)
