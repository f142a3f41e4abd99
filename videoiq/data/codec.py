"""Pixels in and out: JPEG decode/encode (simplejpeg or PIL) and video files read and written with PyAV,
with how much of each video decoded against what its container declares (:class:`DecodeCheck`).

The one place that knows which libraries turn bytes into ``(H, W, 3)`` uint8 RGB arrays. simplejpeg
is the default decoder because it is about twice as fast as PIL on the same libjpeg-turbo (measured
by ``videoiq bench data``); PIL stays available for the benchmark and for frames simplejpeg refuses
(PNG or other formats behind a frame file name), which the converters re-encode as RGB JPEGs.
"""
from __future__ import annotations

import io
import itertools
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterator, Literal

import numpy as np

from ..errors import VideoiqError

Decoder = Literal["simplejpeg", "pil"]
DECODERS: tuple[str, ...] = ("simplejpeg", "pil")
JPEG_QUALITY = 90  # converters' default; about 5 KiB per 112x112 frame


class FrameError(VideoiqError, ValueError):
    """Bytes that are not a decodable image."""


class VideoDecodeError(VideoiqError, ValueError):
    """A video file that cannot be opened or decoded, or has no frames."""


def decode_jpeg(data: bytes | memoryview, decoder: Decoder = "simplejpeg", out: np.ndarray | None = None) -> np.ndarray:
    """RGB ``(H, W, 3)`` uint8 pixels of a JPEG; :class:`FrameError` if it does not decode.

    With ``out`` (a writable ``(H, W, 3)`` uint8 array) the pixels go there, and an image of another size is
    a :class:`FrameError`; simplejpeg decodes straight into it, so a clip's frames fill one array.
    """
    try:
        if decoder == "simplejpeg":
            import simplejpeg

            if out is None:
                return simplejpeg.decode_jpeg(data, colorspace="RGB")
            _check_size(simplejpeg.decode_jpeg_header(data)[:2], out)
            simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out)
            return out
        if decoder == "pil":
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                if out is None:
                    return np.asarray(im.convert("RGB"))
                _check_size((im.height, im.width), out)
                out[...] = np.asarray(im.convert("RGB"))
                return out
    except FrameError:
        raise
    except Exception as e:  # each library raises its own types; the caller names the record
        raise FrameError(f"undecodable image ({type(e).__name__}: {e})") from None
    raise ValueError(f"unknown decoder {decoder!r}; expected one of {DECODERS}")


def jpeg_size(data: bytes | memoryview, decoder: Decoder = "simplejpeg") -> tuple[int, int]:
    """``(H, W)`` of a JPEG from its header alone; :class:`FrameError` if it has none."""
    try:
        if decoder == "simplejpeg":
            import simplejpeg

            h, w, _, _ = simplejpeg.decode_jpeg_header(data)
            return h, w
        if decoder == "pil":
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                return im.height, im.width
    except Exception as e:
        raise FrameError(f"undecodable image ({type(e).__name__}: {e})") from None
    raise ValueError(f"unknown decoder {decoder!r}; expected one of {DECODERS}")


def _check_size(size: tuple[int, int], out: np.ndarray) -> None:
    if tuple(size) != out.shape[:2]:
        raise FrameError(f"{size[0]}x{size[1]} pixels where {out.shape[0]}x{out.shape[1]} were expected")


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


DEFAULT_MAX_LOSS = 0.05  # share of a video's declared frames that may fail to decode before it is reported
ROUNDING_SLACK = 2  # frames: a count derived from a duration rounds, and muxers differ by a frame at the ends


@dataclass(frozen=True)
class DecodeCheck:
    """How much of a video decoded: what its container declares against what came out.

    ``declared_frames`` is the stream's frame count, or where the container counts no frames (webm, mkv)
    the stream's duration (else the container's) times the frame rate; 0 when it says neither.
    For a time span, it is the span's share of that. Frames are counted before any fps resampling.
    ``decoded_seconds`` is the time the decoded frames' timestamps cover (None when they have none) and
    ``damaged_packets`` the packets the decoder rejected.

    A variable-frame-rate file holds fewer frames than its frame rate times its duration, all of them whole:
    so where no packet was damaged and the frames have timestamps, the loss is the share of the declared time
    the frames do not cover; otherwise the share of the declared frames that did not decode.
    """

    declared_frames: int
    decoded_frames: int
    fps: float
    decoded_seconds: float | None = None
    damaged_packets: int = 0

    @property
    def declared_seconds(self) -> float:
        return self.declared_frames / (self.fps or 1.0)

    @property
    def seconds(self) -> float:
        """The time that decoded: what the timestamps cover, else the decoded frames at the stream's rate."""
        return self.decoded_seconds if self.decoded_seconds is not None else self.decoded_frames / (self.fps or 1.0)

    @property
    def lost(self) -> float:
        """The share of the video that did not decode (0 when nothing is declared)."""
        if self.declared_frames <= 0:
            return 0.0
        if self.damaged_packets == 0 and self.decoded_seconds is not None and self.fps > 0:
            return max(0.0, 1.0 - self.decoded_seconds / self.declared_seconds)
        return max(0.0, 1.0 - self.decoded_frames / self.declared_frames)

    def short(self, max_loss: float = DEFAULT_MAX_LOSS) -> bool:
        """Whether more than ``max_loss`` of the video, and more than rounding explains, failed to decode."""
        missing = self.lost * self.declared_frames  # in frames at the declared rate
        return self.lost > max_loss and missing > ROUNDING_SLACK

    def describe(self) -> str:
        """e.g. ``decoded 22 of 44 frames (0.9 of 1.8 s, 50% lost)``."""
        damaged = f", {self.damaged_packets} damaged packets" if self.damaged_packets else ""
        return (f"decoded {self.decoded_frames} of {self.declared_frames} frames ({self.seconds:.1f} "
                f"of {self.declared_seconds:.1f} s, {100 * self.lost:.0f}% lost{damaged})")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecodeCheck:
        """The check back from :meth:`as_dict`'s figures (older records have no packet count: none damaged)."""
        seconds = d.get("decoded_seconds")
        return cls(int(d["declared_frames"]), int(d["decoded_frames"]), float(d["fps"]),
                   None if seconds is None else float(seconds), int(d.get("damaged_packets", 0)))

    def as_dict(self) -> dict[str, Any]:
        """The figures as stored in a record header and ``__meta__``."""
        return {"declared_frames": self.declared_frames, "decoded_frames": self.decoded_frames,
                "declared_seconds": round(self.declared_seconds, 3), "decoded_seconds": round(self.seconds, 3),
                "fps": round(self.fps, 3), "damaged_packets": self.damaged_packets, "lost": round(self.lost, 4)}


class _Damage:
    """How many packets a decode passed over."""

    def __init__(self) -> None:
        self.packets = 0


class _Span:
    """The time the decoded frames cover, from their timestamps (None once a frame has none)."""

    def __init__(self, rate: float) -> None:
        self.rate, self.first, self.last, self.known = rate, None, None, True

    def add(self, t: float | None) -> None:
        if t is None:
            self.known = False
            return
        self.first = t if self.first is None else min(self.first, t)
        self.last = t if self.last is None else max(self.last, t)

    def seconds(self) -> float | None:
        if not self.known or self.first is None or not self.rate:
            return None
        return self.last - self.first + 1.0 / self.rate  # the last frame shows for one frame's time


class VideoFrames:
    """RGB frames of a video file, resampled to ``fps`` (None: every frame) with the short side scaled,
    optionally only those of the time span ``span = (start, end)`` in seconds. Iterate once; afterwards
    :attr:`check` compares what decoded with what the container declares.

    Resampling keeps the first decoded frame at or after each tick ``start + k / fps`` of the stream's time,
    so a 30 fps file read at 5 fps yields every sixth frame and a 5 fps file read at 30 fps never repeats.
    A packet that fails to decode (garbage in the file) is passed over and decoding goes on, as ffmpeg
    does; a file that ends early (truncated) ends the frames. Both show in :attr:`check`, never silently.
    """

    def __init__(self, path: str, fps: float | None = None, short_side: int = 0,
                 span: tuple[float, float] | None = None):
        self.path, self.fps, self.short_side, self.span = path, fps, short_side, span
        self.check: DecodeCheck | None = None

    def __iter__(self) -> Iterator[np.ndarray]:
        container, stream, rate = _open_video(self.path)
        with container:
            declared = _declared_frames(container, stream, rate, self.span)
            height, width = scaled_size(stream.codec_context.height, stream.codec_context.width, self.short_side)
            start, end = self.span if self.span is not None else (0.0, float("inf"))
            # spans and ticks count from the stream's first timestamp, which some containers (MPEG-TS) put late
            origin = float(stream.start_time * stream.time_base) if stream.start_time else 0.0
            next_tick, decoded, kept = start, 0, 0
            damage, covered = _Damage(), _Span(rate)
            for frame in self._frames_from(container, stream, origin + start, rate, damage):
                t = float(frame.time) - origin if frame.time is not None else decoded / (rate or 1.0)
                if t + 1e-6 < start:
                    continue
                if t + 1e-6 >= end:
                    break
                decoded += 1
                covered.add(None if frame.time is None else t)
                if self.fps is not None:
                    if t + 1e-6 < next_tick:
                        continue
                    next_tick = start + (int((t - start) * self.fps + 1e-6) + 1) / self.fps
                kept += 1
                yield frame.to_ndarray(format="rgb24", width=width, height=height)
        self.check = DecodeCheck(declared, decoded, rate, covered.seconds(), damage.packets)
        if kept == 0:
            raise VideoDecodeError(f"{self.path}: no frames decoded"
                                   + (f" in {start:.2f}..{end:.2f} s" if self.span is not None else ""))

    def _frames_from(self, container: Any, stream: Any, at: float, rate: float, damage: _Damage) -> Iterator[Any]:
        """Decoded frames from the keyframe at or before stream time ``at``, or from the file's start where
        the demuxer's seek lands past ``at`` (MPEG-TS seeks are approximate)."""
        if at <= 0:
            return _decoded_frames(container, stream, damage)
        try:
            container.seek(int(at / stream.time_base), stream=stream)
        except Exception as e:
            raise VideoDecodeError(f"{self.path}: cannot seek to {at:.2f} s ({type(e).__name__})") from None
        frames = _decoded_frames(container, stream, damage)
        first = next(frames, None)
        if first is None or first.time is None or float(first.time) <= at + 1.0 / (rate or 1.0):
            return itertools.chain([first] if first is not None else [], frames)
        container.seek(0)
        damage.packets = 0
        return _decoded_frames(container, stream, damage)


# FFmpeg's demuxers that open still images (png_pipe, jpeg_pipe, image2, ...) and text files (tty) as a
# video stream; classifying one would give a confident answer about something that is not a video
NOT_VIDEO_FORMATS = ("_pipe", "image2", "tty")


def _open_video(path: str) -> tuple[Any, Any, float]:
    """The container, its first video stream and that stream's frame rate (0 when unknown)."""
    import av

    try:
        container = av.open(path)
    except Exception as e:  # av.error.* for missing, unreadable or non-media files
        raise VideoDecodeError(f"{path}: cannot open ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(f"{path}: no video stream")
    if container.format.name.endswith(NOT_VIDEO_FORMATS):
        name = container.format.name
        container.close()
        raise VideoDecodeError(f"{path}: not a video (FFmpeg reads it as {name}: an image or text file)")
    stream = container.streams.video[0]
    # frame threading also decides how many frames survive a damaged packet, so every reader of a file uses it
    stream.thread_type = "AUTO"
    return container, stream, float(stream.average_rate or stream.guessed_rate or 0)


def _declared_seconds(container: Any, stream: Any) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION", "")  # mkv/webm: "HH:MM:SS.nnnnnnnnn" per stream
    try:
        h, m, sec = tag.split(":")
        return 3600 * int(h) + 60 * int(m) + float(sec)
    except ValueError:
        pass
    # the longest stream's duration, in AV_TIME_BASE units: a longer audio track would count as lost frames,
    # hence the per-stream figures above first; 0: not declared
    return container.duration / 1e6 if container.duration else 0.0


def _declared_frames(container: Any, stream: Any, rate: float, span: tuple[float, float] | None) -> int:
    seconds = _declared_seconds(container, stream)
    if span is not None:
        end = min(span[1], seconds) if seconds > 0 else span[1]
        return max(0, round((end - max(0.0, span[0])) * rate))
    return stream.frames if stream.frames > 0 else round(seconds * rate)


def _decoded_frames(container: Any, stream: Any, damage: _Damage) -> Iterator[Any]:
    """Every frame that decodes, packet by packet, passing over (and counting in ``damage``) packets the
    decoder rejects."""
    packets = container.demux(stream)
    while True:
        try:
            packet = next(packets)
        except Exception:  # the end, or a demuxer error where a truncated or damaged file ends
            return
        try:
            frames = packet.decode()
        except Exception:  # av.error.InvalidDataError and friends: a damaged packet, counted as lost frames
            damage.packets += 1
            continue
        yield from frames


def read_video(path: str, fps: float | None = None, short_side: int = 0,
               span: tuple[float, float] | None = None) -> VideoFrames:
    """The frames of a video file (see :class:`VideoFrames`); after iterating, ``.check`` says how much decoded."""
    return VideoFrames(path, fps, short_side, span)


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


def probe_video(path: str) -> tuple[float, float]:
    """(seconds, frame rate) a video file declares, read from its header without decoding (0 when unknown)."""
    container, stream, rate = _open_video(path)
    with container:
        return _declared_seconds(container, stream), rate


def scan_video(path: str) -> DecodeCheck:
    """How many frames a video file decodes to, against what it declares (decoded without converting pixels)."""
    container, stream, rate = _open_video(path)
    with container:
        damage, covered, decoded = _Damage(), _Span(rate), 0
        for frame in _decoded_frames(container, stream, damage):
            decoded += 1
            covered.add(None if frame.time is None else float(frame.time))
        check = DecodeCheck(_declared_frames(container, stream, rate, None), decoded, rate, covered.seconds(),
                            damage.packets)
    if check.decoded_frames == 0:
        raise VideoDecodeError(f"{path}: no frames decoded")
    return check


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
