"""A folder of images without annotations (e.g. to train or visualise on your own photos).

Images are found recursively under ``root`` (or ``root/<split>`` when that folder exists), in sorted
path order so that the index -> file mapping is deterministic.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch.utils.data import Dataset

from partformer.data import register_dataset
from partformer.data.io import decode_or_skip, load_image
from partformer.data.transforms import apply_resize, check_resize_mode, to_tensor_image

__all__ = ["ImageFolderDataset", "IMAGE_EXTENSIONS", "list_images"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(folder: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
    """Paths (relative to ``folder``, '/'-separated, sorted) of the images below ``folder``.

    Extensions match case-insensitively; hidden files and folders (``.name``) are skipped.
    """
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(exts):
                rel = os.path.relpath(os.path.join(dirpath, name), folder)
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


@register_dataset("image_folder")
class ImageFolderDataset(Dataset):
    """Unannotated images. Samples: ``image``, ``label`` (always 0), ``index``, ``orig_size``,
    ``path`` (str, relative to the folder).

    Args:
        root: folder searched recursively.
        split: if ``root/<split>`` is a folder, only it is used; otherwise ignored.
        image_size, resize: as for every dataset; ``bbox_crop`` is unavailable (no boxes).
        extensions: file name endings accepted as images.
        skip_bad_images: warn and return ``None`` for undecodable files instead of raising.
    """

    def __init__(self, root: str, split: str, image_size: int = 256, resize: str = "whole",
                 extensions: Sequence[str] = IMAGE_EXTENSIONS, skip_bad_images: bool = False):
        check_resize_mode(resize, image_size, no_boxes="an image folder")
        root = os.path.expanduser(os.fspath(root))
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root} is not a directory (set data.root)")
        folder = os.path.join(root, split) if split and os.path.isdir(os.path.join(root, split)) \
            else root
        if isinstance(extensions, str):
            extensions = (extensions,)
        self.root = root
        self.folder = folder
        self.split = split
        self.image_size = int(image_size)
        self.resize = resize
        self.skip_bad_images = bool(skip_bad_images)
        self.paths = list_images(folder, extensions)
        if not self.paths:
            raise FileNotFoundError(f"no image found under {folder} (searched recursively for "
                                    f"files ending in {', '.join(extensions)}; hidden files are "
                                    f"skipped)")

    def __len__(self) -> int:
        return len(self.paths)

    def image_path(self, index: int) -> str:
        return os.path.join(self.folder, self.paths[index])

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range ({len(self)} images in {self.folder})")
        image = decode_or_skip(lambda: load_image(self.image_path(index)), self.skip_bad_images)
        if image is None:
            return None
        h, w = image.shape[:2]
        out = apply_resize(self.resize, self.image_size, image)
        return {
            "image": to_tensor_image(out.image),
            "label": torch.tensor(0, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
            "path": self.paths[index],
        }

    def __repr__(self) -> str:
        return (f"ImageFolderDataset(folder={self.folder!r}, n={len(self)}, "
                f"image_size={self.image_size}, resize={self.resize!r})")
