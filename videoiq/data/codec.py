"""Pixels in and out: JPEG decode/encode (simplejpeg or PIL) and video files read and written with PyAV.

The one place that knows which libraries turn bytes into ``(H, W, 3)`` uint8 RGB arrays. simplejpeg
is the default decoder because it is about twice as fast as PIL on the same libjpeg-turbo (measured
by ``videoiq bench data``); PIL stays available for the benchmark and for frames simplejpeg refuses
(PNG or other formats behind a frame file name), which the converters re-encode as RGB JPEGs.
"""
from __future__ import annotations

import io
from fractions import Fraction
from typing import Iterator, Literal

import numpy as np

Decoder = Literal["simplejpeg", "pil"]
DECODERS: tuple[str, ...] = ("simplejpeg", "pil")
JPEG_QUALITY = 90  # converters' default; about 5 KiB per 112x112 frame


class FrameError(ValueError):
    """Bytes that are not a decodable image."""


class VideoDecodeError(ValueError):
    """A video file that cannot be opened or decoded, or has no frames."""


def decode_jpeg(data: bytes | memoryview, decoder: Decoder = "simplejpeg") -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 pixels of a JPEG; :class:`FrameError` if it does not decode."""
    try:
        if decoder == "simplejpeg":
            import simplejpeg

            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        if decoder == "pil":
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                return np.asarray(im.convert("RGB"))
    except Exception as e:  # each library raises its own types; the caller names the record
        raise FrameError(f"undecodable image ({type(e).__name__}: {e})") from None
    raise ValueError(f"unknown decoder {decoder!r}; expected one of {DECODERS}")


def encode_jpeg(pixels: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """A baseline RGB JPEG of ``(H, W, 3)`` uint8 pixels."""
    import simplejpeg

    return simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality=quality, colorspace="RGB")


def normalize_jpeg(data: bytes, verify: bool) -> tuple[bytes, int, int, bool]:
    """Bytes a reader can decode with either decoder, the image size, and whether it was re-encoded.

    A JPEG simplejpeg reads (RGB, greyscale or CMYK) is kept byte for byte, fully decoded first when
    ``verify``. Anything else PIL opens (PNG, BMP...) is re-encoded as an RGB JPEG; otherwise
    :class:`FrameError`.
    """
    import simplejpeg

    try:
        if verify:
            h, w = simplejpeg.decode_jpeg(data, colorspace="RGB").shape[:2]
        else:
            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        return data, h, w, False
    except (ValueError, RuntimeError):
        pixels = decode_jpeg(data, "pil")
        return encode_jpeg(pixels), pixels.shape[0], pixels.shape[1], True


def scaled_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the shorter side at ``short_side`` (0 keeps the size), both even for video codecs."""
    if short_side <= 0:
        return height, width
    if height <= width:
        return short_side, max(2, round(width * short_side / height / 2) * 2)
    return max(2, round(height * short_side / width / 2) * 2), short_side


def read_video(path: str, fps: float | None = None, short_side: int = 0) -> Iterator[np.ndarray]:
    """RGB frames of a video file, resampled to ``fps`` (None: every frame) with the short side scaled.

    Resampling keeps the first decoded frame at or after each tick ``k / fps`` of the stream's time, so
    a 30 fps file read at 5 fps yields every sixth frame and a 5 fps file read at 30 fps never repeats.
    """
    import av

    try:
        container = av.open(path)
    except Exception as e:  # av.error.* for missing, unreadable or non-media files
        raise VideoDecodeError(f"{path}: cannot open ({type(e).__name__}: {e})") from None
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        height, width = scaled_size(stream.codec_context.height, stream.codec_context.width, short_side)
        next_tick, count = 0.0, 0
        try:
            for frame in container.decode(stream):
                if fps is not None:
                    t = float(frame.time) if frame.time is not None else count / float(stream.average_rate or 1)
                    if t + 1e-6 < next_tick:
                        continue
                    next_tick = (int(t * fps + 1e-6) + 1) / fps
                count += 1
                yield frame.to_ndarray(format="rgb24", width=width, height=height)
        except Exception as e:  # av.error.InvalidDataError and friends mid-stream
            raise VideoDecodeError(f"{path}: decoding failed after {count} frames ({type(e).__name__}: {e})") from None
    if count == 0:
        raise VideoDecodeError(f"{path}: no frames decoded")


def write_video(path: str, frames: np.ndarray, fps: int, codec: str = "libx264", crf: int = 18) -> None:
    """Encode ``(T, H, W, 3)`` uint8 RGB frames (even H and W) as a video file; the container follows the suffix."""
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.height, stream.width = frames.shape[1], frames.shape[2]
        stream.pix_fmt = "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": str(crf), "preset": "veryfast"}
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")))
        container.mux(stream.encode())


def count_frames(path: str) -> int:
    """The number of frames a video file decodes to (decoded without converting pixels)."""
    import av

    try:
        container = av.open(path)
    except Exception as e:
        raise VideoDecodeError(f"{path}: cannot open ({type(e).__name__}: {e})") from None
    with container:
        if not container.streams.video:
            raise VideoDecodeError(f"{path}: no video stream")
        try:
            return sum(1 for _ in container.decode(container.streams.video[0]))
        except Exception as e:
            raise VideoDecodeError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None


def read_frames_at(path: str, indices: list[int], short_side: int = 0) -> np.ndarray:
    """RGB frames ``(len(indices), H, W, 3)`` at the given 0-based frame indices (repeats allowed),
    decoding the file once and keeping only those frames."""
    wanted = sorted(set(indices))
    kept: dict[int, np.ndarray] = {}
    for i, pixels in enumerate(read_video(path, None, short_side)):
        if i in wanted:
            kept[i] = pixels
        if len(kept) == len(wanted):
            break
    missing = [i for i in wanted if i not in kept]
    if missing:
        raise VideoDecodeError(f"{path}: frames {missing[:5]} are past its end")
    return np.stack([kept[i] for i in indices])
