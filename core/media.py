"""Output files: PNG / MP4 / GIF encoders with the settings embedded, and sample tiling.

Pure functions of uint8 pixels (as `Pipeline.decode` returns them), shared by the sample and evaluate
CLIs, the app and the admin job manager, so a download from the app is the file the CLI writes.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin


def png_bytes(image: np.ndarray, settings: dict[str, Any] | None = None) -> bytes:
    """Encode uint8 (H, W, 3) as PNG with the settings as a JSON text chunk ("elt-studio")."""
    info = PngImagePlugin.PngInfo()
    if settings:
        info.add_text("elt-studio", json.dumps(settings))
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def even_frames(frames: np.ndarray) -> np.ndarray:
    """Pad (T, H, W, 3) with an edge row/column so H and W are even (H.264 yuv420p needs it)."""
    _, H, W, _ = frames.shape
    return np.pad(frames, ((0, 0), (0, H % 2), (0, W % 2), (0, 0)), mode="edge")


def mp4_bytes(frames: np.ndarray, fps: int = 8, settings: dict[str, Any] | None = None, scale: int = 1) -> bytes:
    """H.264 / yuv420p MP4 (plays in browsers) of uint8 (T, H, W, 3); settings go in the comment tag."""
    import imageio_ffmpeg

    frames = even_frames(frames.repeat(scale, 1).repeat(scale, 2))
    _, H, W, _ = frames.shape
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "clip.mp4"
        params = ["-metadata", f"comment={json.dumps(settings)}"] if settings else []
        writer = imageio_ffmpeg.write_frames(str(path), (W, H), fps=fps, codec="libx264", pix_fmt_out="yuv420p",
                                             macro_block_size=1, output_params=params, ffmpeg_log_level="error")
        writer.send(None)
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
        writer.close()
        return path.read_bytes()


def gif_bytes(frames: np.ndarray, fps: int = 8, settings: dict[str, Any] | None = None, scale: int = 1) -> bytes:
    """Looping GIF of uint8 (T, H, W, 3); settings go in the GIF comment."""
    images = [Image.fromarray(f.repeat(scale, 0).repeat(scale, 1)) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0,
                   comment=json.dumps(settings).encode() if settings else b"")
    return buffer.getvalue()


def tile(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """uint8 (N, [T,] H, W, 3) -> one grid (of frames for clips), `columns` wide (default: one row)."""
    n, *frame_axes, h, w, c = images.shape
    columns = columns or n
    rows = -(-n // columns)
    grid = np.full((*frame_axes, rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[..., y:y + h, x:x + w, :] = image
    return grid
