"""Reading and writing 8-bit images for super-resolution (Pillow), with one-line errors for what we cannot use."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..files import atomic_write

MAX_PIXELS = 64_000_000  # refuse images over 64 megapixels before decoding them


def read_image(path: str | os.PathLike, *, allow_gray: bool = True) -> np.ndarray:
    """An 8-bit image as uint8 (H, W, 3) RGB or, when ``allow_gray``, (H, W) for a single-channel image.

    Palette images are expanded to RGB; an alpha channel is dropped. 16-bit or float images, CMYK and other modes
    raise :class:`DataError` (one line), as do files Pillow cannot decode.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist or is not a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise DataError(f"{path} is {w}x{h}, over the {MAX_PIXELS:,}-pixel limit")
                mode = im.mode
                if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F") or mode.startswith("I;"):
                    raise DataError(f"{path} is a {'16-bit' if '16' in mode else '32-bit'} image (mode {mode}); "
                                    f"only 8-bit images are supported: convert it to 8 bits per channel first")
                if mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                    mode = im.mode
                if mode in ("RGBA", "LA"):
                    im = im.convert(mode[:-1])
                    mode = im.mode
                if mode == "1":
                    im = im.convert("L")
                    mode = "L"
                if mode not in ("RGB", "L"):
                    raise DataError(f"{path} has colour mode {mode}; give an 8-bit RGB or grayscale image")
                arr = np.array(im, dtype=np.uint8)
    except DataError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as err:
        raise DataError(f"cannot read {path} as an image: {' '.join(str(err).split())[:160]}") from None
    if arr.ndim == 2 and not allow_gray:
        raise DataError(f"{path} is a grayscale image; give a colour (RGB) image")
    return arr


def write_png(path: str | os.PathLike, img: np.ndarray) -> Path:
    """Write uint8 (H, W) or (H, W, 3) ``img`` as PNG all at once (temporary file, then rename)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(buf, format="PNG")
    return atomic_write(path, lambda fh: fh.write(buf.getvalue()))
