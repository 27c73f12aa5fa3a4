"""RePre's reconstruction branch added to lightly's DINO on a timm ViT, in a plain PyTorch loop.

    pip install repre lightly
    python examples/lightly_dino.py            # a few steps on generated images

The branch reuses the student's forward: `branch.encode` returns the pooled embedding for the DINO head and
the tap maps the decoder reconstructs the pixels from. Everything else is lightly's and yours.
"""

from __future__ import annotations

import copy

import timm
import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torchvision.transforms import v2

from repre.branch import ReconstructionBranch


def train(images: torch.Tensor, steps: int = 20, weight: float = 1.0, seed: int = 0) -> list[float]:
    """images [N, 3, 32, 32] normalized -> the reconstruction loss of each step."""
    torch.manual_seed(seed)
    vit = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=4, embed_dim=96, depth=4,
                            num_heads=3, num_classes=0)
    head, teacher_head = DINOProjectionHead(96, 256, 64, 512), DINOProjectionHead(96, 256, 64, 512)
    teacher = copy.deepcopy(vit)
    teacher_head.load_state_dict(head.state_dict())
    deactivate_requires_grad(teacher), deactivate_requires_grad(teacher_head)
    branch = ReconstructionBranch(vit, taps=2, width=32)  # the decoder only: its own parameters
    criterion = DINOLoss(output_dim=512, warmup_teacher_temp_epochs=0)
    params = [*vit.parameters(), *head.parameters(), *branch.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    augment = v2.Compose([v2.RandomResizedCrop(32, scale=(0.4, 1.0), antialias=True), v2.RandomHorizontalFlip()])
    losses = []
    for _ in range(steps):
        views = [torch.stack([augment(x) for x in images]) for _ in range(2)]
        update_momentum(vit, teacher, 0.99), update_momentum(head, teacher_head, 0.99)
        with torch.no_grad():
            teacher_out = [teacher_head(teacher(v)) for v in views]
        pooled, maps = branch.encode(torch.cat(views))  # one student forward for both losses
        student_out = list(head(pooled).chunk(2))
        recon = branch.loss(maps, torch.cat(views))
        loss = criterion(teacher_out, student_out) + weight * recon
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(recon.item())
    return losses


if __name__ == "__main__":
    blobs = torch.zeros(16, 3, 32, 32)
    for i, x in enumerate(blobs):  # squares of two sizes and colours: images with something to reconstruct
        x[i % 3, 8 : 16 + i % 8, 4 : 20 + i % 12] = 1.0
    print([round(v, 3) for v in train((blobs - 0.5) / 0.5)])
