"""The model card a detector folder carries (``README.md``): template and the fields filled into it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import DetectorConfig

MODEL_CARD = """---
{{ card_data }}
---

# SEF detector: AI-generated image detection

A detector from the SEF toolkit (Separate Expert Fusion). It scores how likely an image is AI-generated
(probability in [0, 1]).

- backbone: `{{ backbone }}` (`{{ backbone_id }}`, revision `{{ backbone_revision }}`), frozen
- experts (LoRA adapters + linear heads): {{ experts }}
- fusion: `{{ fusion }}`
- input: {{ preprocessing }}

{{ storage_note }} Load with:

```python
from sefmodel import SEFDetector
detector = SEFDetector.from_pretrained("{{ repo_id | default('PATH_OR_REPO_ID', true) }}")
scores = detector.score(images)  # list of PIL images of any size
```
"""


def card_fields(config: DetectorConfig, processor: Any) -> dict[str, str]:
    """Values for :data:`MODEL_CARD`'s placeholders, from the detector's config and image processor."""
    if config.backbone_config is None:
        note = (
            "This repository holds only the trained tensors (`model.safetensors`: LoRA adapters, heads, "
            "fusion head), `config.json` and the image processor (`preprocessor_config.json`); the backbone is "
            "loaded from its own repository by id and revision."
        )
    else:
        note = (
            "The backbone is a randomly initialised test model built from `config.json`, so its weights "
            "are stored here too (`backbone.safetensors`) beside the trained tensors "
            "(`model.safetensors`) and the image processor (`preprocessor_config.json`)."
        )
    resize = f"short side resized to {processor.resize} px" if processor.resize else "native resolution"
    small = "padded with the mean colour" if processor.small == "pad" else "upscaled"
    return {
        "backbone": config.backbone,
        "backbone_id": config.backbone_id or "random, built from config",
        "backbone_revision": config.backbone_revision or "unpinned",
        "experts": ", ".join(f"`{n}`" for n in config.experts),
        "fusion": config.fusion,
        "preprocessing": f"{processor.size} px {processor.crop} crop(s), {resize}, small images {small}",
        "storage_note": note,
    }
