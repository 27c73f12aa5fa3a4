"""The modules: the backbone (`backbone`: a timm wrapper giving the pooled embedding and tap maps; MoCo v3's and
DINO's ViTs on it, `mocov3_vit`, `dino_vit`; the attention kernel of training, `attention`), the frameworks'
heads (`heads`, `sync_bn`) and the RePre decoder (`decoder`)."""

from repre.models.backbone import SMALL_CONFIGS, Backbone, resolve_arch, resolve_taps
from repre.models.decoder import Decoder
from repre.models.heads import mlp

__all__ = ["SMALL_CONFIGS", "Backbone", "Decoder", "mlp", "resolve_arch", "resolve_taps"]
