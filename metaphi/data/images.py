"""Reading a user's image files: one place for what every image reader of metaphi needs.

- :func:`check_images` validates files cheaply before any training (the header, the pixel
  count, and for PNGs the chunk checksums, without decoding pixels), so a corrupt or huge file
  is an error naming it at the start of a run, not a crash when it is first sampled.
- :func:`open_image` opens one file with the same checks; its errors name the file.
- :func:`on_white` composites transparency onto white, so a drawing exported with a
  transparent background reads as drawn (its transparent pixels are black otherwise).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

if TYPE_CHECKING:
    from PIL import Image

# Larger images are refused before they are decoded (a guard against decompression bombs: a
# small PNG can declare billions of pixels). 64 megapixels is far more than a task needs.
MAX_PIXELS = 64_000_000


class ImageFileError(ValueError):
    """An image file cannot be used (corrupt, not an image, or too large)."""


@contextmanager
def open_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> Iterator["Image.Image"]:
    """``path`` opened with Pillow (header read, pixels not yet decoded), or an
    :class:`ImageFileError` naming the file: unreadable, not an image, or more than
    ``max_pixels`` pixels. Decoding errors inside the block are reported the same way."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit
            with Image.open(path) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageFileError(
                        f"image {path} has {w}x{h} = {w * h:,} pixels, more than the limit of "
                        f"{max_pixels:,}; downscale it (a task needs far fewer pixels) or remove "
                        "it")
                yield im
    except Image.DecompressionBombError as e:
        raise ImageFileError(f"image {path} is too large to decode safely ({e}); downscale it "
                             "or remove it") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        if isinstance(e, ImageFileError):
            raise
        raise ImageFileError(f"cannot read image {path}: {e}. Remove or replace the file.") from e


def check_images(paths: Sequence[str | Path], max_pixels: int = MAX_PIXELS) -> None:
    """Raise :class:`ImageFileError` naming every file of ``paths`` that is not a readable
    image of at most ``max_pixels`` pixels. Cheap: headers and sizes only, plus the chunk
    checksums of PNGs (which catch truncated and damaged files); no pixel is decoded."""
    problems = []
    for p in paths:
        try:
            with open_image(p, max_pixels) as im:
                if im.format == "PNG":
                    im.verify()
        except ImageFileError as e:
            problems.append(str(e))
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        head = problems[0] if len(problems) == 1 else (
            f"{len(problems)} of {len(paths)} image files cannot be used:\n  {shown}{more}")
        raise ImageFileError(head)


def on_white(im: "Image.Image") -> "Image.Image":
    """The image with any transparency composited onto a white background (RGB), else as is."""
    from PIL import Image

    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (im.mode in ("L", "RGB")
                                                          and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im
