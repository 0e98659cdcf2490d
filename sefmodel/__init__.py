"""sefmodel: detection half of the SEF toolkit (backbones, LoRA experts, gated fusion, detector save/load)."""

from .backbones import Backbone, CNNBackbone, ViTBackbone, get_backbone_class, known_backbones, register_backbone
from .config import DetectorConfig
from .detector import SEFDetector
from .fusion import known_fusions, register_fusion
from .lora import LoraSettings
from .pipeline import Scores
from .preprocess import ImageProcessor
from .serialization import UnsafeCheckpointError

__all__ = [
    "Backbone",
    "CNNBackbone",
    "DetectorConfig",
    "ImageProcessor",
    "LoraSettings",
    "SEFDetector",
    "Scores",
    "UnsafeCheckpointError",
    "ViTBackbone",
    "get_backbone_class",
    "known_backbones",
    "known_fusions",
    "register_backbone",
    "register_fusion",
]
