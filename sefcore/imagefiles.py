"""Which files are images, and the one listing of a folder's: every command that takes a folder (``sefdata build``,
``sefmodel predict``, ``calibrate``, ``eval``'s benchmark folders, golden sets, the page's dropped folders) sees the
same files in the same order. Light (no numpy, no Pillow): configs read at ``--help`` may import it.
"""

from __future__ import annotations

import os
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "jpe", "jfif", "png", "webp", "bmp", "tif", "tiff", "gif"})
"""Extensions (lower case, no dot) of files, and of shard sample keys (``real.png``), that hold an image."""


def is_image_name(name: str) -> bool:
    """Whether a file name (``photo.JPG``) names an image, by its extension."""
    return "." in name and name.rsplit(".", 1)[1].lower() in IMAGE_EXTENSIONS


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files below ``folder`` (recursive; symlinked folders followed, never into a loop; broken links left
    out; :data:`IMAGE_EXTENSIONS` in any case), sorted by their path relative to it (``/``-separated): the order a
    build keys and plans them in."""
    root = Path(folder)
    found: list[Path] = []
    above = {str(root): frozenset({os.path.realpath(root)})}  # each folder's own and its parents' real paths
    for dirpath, dirnames, filenames in os.walk(str(root), followlinks=True):
        chain = above.pop(dirpath)
        dirnames[:] = [d for d in dirnames if os.path.realpath(os.path.join(dirpath, d)) not in chain]  # no loops
        above.update((os.path.join(dirpath, d), chain | {os.path.realpath(os.path.join(dirpath, d))}) for d in dirnames)
        paths = (Path(dirpath, name) for name in filenames if is_image_name(name))
        found.extend(path for path in paths if path.is_file())  # not a broken link
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())
