"""torch.compile for pre-training: the repeated units of the model, one graph per input shape."""

from __future__ import annotations

from torch import nn

from repre.branch import ReconstructionBranch


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules compiled whole: every transformer block (the members of each `blocks` sequence, timm's layout
    for ViTs, Swin stages and their relatives)."""
    found = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "blocks" and isinstance(module, (nn.Sequential, nn.ModuleList)):
            found += list(module)
    return found


def compile_units(model: nn.Module) -> None:
    """torch.compile, in place, every transformer block (online and momentum encoders) and the RePre branch's
    loss (`ReconstructionBranch.compile_loss`: the choice of the tap maps' rows, the decoder and its loss): the
    repeated units, so one graph serves all blocks; `Module.compile` leaves parameter names unchanged.

    Static shapes: each input shape (DINO's global and local crops, Swin's stages and shifted windows) gets its
    own graph. Dynamo's default would make the second shape symbolic: slower kernels, and on a CPU minutes of
    compiling for a Swin block. The run raises Dynamo's limit of graphs per unit while it trains
    (`repre.core.runtime.run_settings`); torch >= 2.5 shares a graph between the instances of a block, older
    versions may run blocks past the limit uncompiled."""
    for module in transformer_blocks(model):
        module.compile(dynamic=False)
    for module in model.modules():
        if isinstance(module, ReconstructionBranch):
            module.compile_loss(dynamic=False)
