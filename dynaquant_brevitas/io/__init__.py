"""Files: atomic writes and run locks, images, checkpoints, the bitstream container."""

from .checkpoint import CheckpointError, load_checkpoint, load_model, save_atomic, save_model
from .container import ContainerError
from .files import LockedError, check_distinct, folder_lock, write_atomic, write_json
from .images import DataError, ImageFolderCrops, list_images, read_image, write_image

__all__ = [
    "CheckpointError", "ContainerError", "DataError", "ImageFolderCrops", "LockedError", "check_distinct",
    "folder_lock", "list_images", "load_checkpoint", "load_model", "read_image", "save_atomic",
    "save_model", "write_atomic", "write_image", "write_json"
]
