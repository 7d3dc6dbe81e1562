"""Real media made on the spot with PyAV (FFmpeg), for the outbound media scenarios.

Each sample is a genuine file of its format (the sandbox Meta sniffs the bytes and the
bridge decodes what it converts), a few kilobytes, generated rather than checked in.
"""

from __future__ import annotations

import array
import io
import math

import av

PNG_HEADER = b"\x89PNG\r\n\x1a\n"


def tone(container: str, codec: str, seconds: float = 1.0, rate: int = 48000) -> bytes:
    """A 440 Hz mono tone encoded with ``codec`` in ``container`` (mp3, ogg, webm…)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        samples = int(rate * seconds)
        pcm = array.array(
            "h", (int(8000 * math.sin(i * 440 * 2 * math.pi / rate)) for i in range(samples)))
        frame = av.AudioFrame(format="s16", layout="mono", samples=samples)
        frame.planes[0].update(pcm.tobytes())
        frame.sample_rate = rate
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def image(codec: str, container: str, size: int = 16) -> bytes:
    """A ``size``×``size`` picture encoded with ``codec`` (png, libwebp…)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=1)
        stream.width = stream.height = size
        stream.pix_fmt = "rgba" if codec == "png" else "yuv420p"
        frame = av.VideoFrame(size, size, "rgb24").reformat(format=stream.pix_fmt)
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buf.getvalue()


def png(padding: int = 0) -> bytes:
    """A real PNG, optionally followed by ``padding`` bytes (to pass a size limit)."""
    return image("png", "image2pipe") + b"\0" * padding


def mp3_voice_note() -> bytes:
    """What Rocket.Chat's recorder uploads as "Audio record.mp3"."""
    return tone("mp3", "libmp3lame")


def webm_opus_voice_note() -> bytes:
    """A browser MediaRecorder recording (webm/opus), which Rocket.Chat may label mp3."""
    return tone("webm", "libopus")


def webp() -> bytes:
    return image("libwebp", "webp")
