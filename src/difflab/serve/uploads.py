"""What the web page may send: uploaded images only, decoded safely.

The browser never names a file on the server: every image arrives as an upload, which is read
here with three guards before anything else touches it: a size limit (``--max-upload-mb``),
Pillow's decompression-bomb check made strict (an image over ``MAX_PIXELS`` pixels is refused,
not merely warned about, so a 100 kB PNG cannot claim 40,000 × 40,000 pixels of memory), and a
full decode (a truncated or non-image file is one clear message, not a traceback).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 4096 * 4096  # a 16-megapixel image at most (Pillow's own default warns at ~89 M)


class UploadError(ValueError):
    """An upload the server refuses; the page shows its message."""


def read_upload(data: bytes | str | Path, max_bytes: int, what: str = "the upload") -> Image.Image:
    """The image in ``data`` (the bytes of an upload, or the temporary file the web framework
    stored it in), fully decoded.

    Raises:
        UploadError: too large, too many pixels, not an image, or damaged; the message says which.
    """
    if isinstance(data, (str, Path)):
        path = Path(data)
        size = path.stat().st_size
        if size > max_bytes:
            raise UploadError(f"{what} is {size / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB "
                              f"(difflab serve --max-upload-mb)")
        data = path.read_bytes()
    if len(data) > max_bytes:
        raise UploadError(f"{what} is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB "
                          f"(difflab serve --max-upload-mb)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise UploadError(f"{what} claims {width}×{height} pixels, over the {MAX_PIXELS:,}-pixel limit "
                                  f"(a decompression bomb, or simply too large: resize it)")
            image.load()
    except UploadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise UploadError(f"{what} is refused as a decompression bomb ({err})") from None
    except UnidentifiedImageError:
        raise UploadError(f"{what} is not an image (PNG, JPEG, WebP, …)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise UploadError(f"{what} is a damaged image ({err})") from None
    return image
