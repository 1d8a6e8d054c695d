"""viral_lens_torch: capture multimodal-LLM hidden states into the viral-lens capture format.

Needs only torch >= 1.13 (transformers optional, for the Trainer callback). See README.md next to this package.
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CaptureFormatError,
    CaptureWriteError,
    DuplicateSampleError,
    ImageTokenCountError,
    LayerDiscoveryError,
    TokenGridError,
    ViralLensError,
)
from .safetensors_io import load_file, save_file  # noqa: E402
from .writer import (  # noqa: E402
    CaptureWriter,
    estimate_disk_bytes,
    format_bytes,
    layer_index,
    layer_name,
    read_capture,
)
from .discovery import ModelLayout, discover, image_token_geometry, resolve_image_tokens  # noqa: E402
from .targets import check_token_grid, encoder_features, vision_tower_features  # noqa: E402
from .ingest import IngestClient, IngestWarning  # noqa: E402
from .capture import (  # noqa: E402
    HiddenStateCapture,
    LlavaRepoImageMask,
    capture_dataset,
    capture_hidden_states,
    shuffle_image_tokens,
)
from .training import ViralLensCallback, capture_during_training, step_dir  # noqa: E402

__all__ = [
    "__version__",
    "CaptureFormatError", "CaptureWriteError", "DuplicateSampleError", "ImageTokenCountError",
    "LayerDiscoveryError", "TokenGridError", "ViralLensError",
    "load_file", "save_file",
    "CaptureWriter", "estimate_disk_bytes", "format_bytes", "layer_index", "layer_name", "read_capture",
    "ModelLayout", "discover", "image_token_geometry", "resolve_image_tokens",
    "check_token_grid", "encoder_features", "vision_tower_features",
    "IngestClient", "IngestWarning",
    "HiddenStateCapture", "LlavaRepoImageMask", "capture_dataset", "capture_hidden_states", "shuffle_image_tokens",
    "ViralLensCallback", "capture_during_training", "step_dir",
]
