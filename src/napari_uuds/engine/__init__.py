"""The UUDS engine: pure PyTorch + numpy; never imports napari or Qt."""
from .config import LossWeights, ModelConfig, TrainConfig
from .errors import UUDSError

__all__ = ["LossWeights", "ModelConfig", "TrainConfig", "UUDSError"]
