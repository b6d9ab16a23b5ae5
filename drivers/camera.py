"""Camera scanner: reads phone screens (payment codes, member codes) from a camera or a recorded clip.

    camera:0                                  V4L2 device index 0 (/dev/video0)
    camera:///dev/v4l/by-id/usb-...-index0    a V4L2 device by path (by-id survives re-plugging)
    camera:///path/clip.mp4                   a video file, played once (tests, demos, replaying a field issue)
    camera:///path/frames_%04d.png            an image sequence (OpenCV's printf pattern), played once
    camera:///path/frames/                    a directory of images in name order, played once

URL query (optional): width, height (ask a live camera for a resolution), fps (frame rate of an image sequence
or directory; files otherwise use their own timestamps), realtime=1 (pace a file at its frame rate instead of
decoding as fast as possible), roi=x,y,w,h (fractions of the frame). Keyword options win over the query.

Per frame: crop to the region of interest → grayscale → decoder → debounce → `emit`. A phone held in front of
the camera for two seconds is ONE scan: a text is emitted when first seen and again only after it has been
absent for `repeat_after_frames` consecutive frames AND `repeat_after_seconds`. The QR code and the barcode on one
payment screen carry the same digits, so texts are de-duplicated within a frame and across that window.
"""

from __future__ import annotations

import glob
import os
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from drivers.backoff import Backoff
from drivers.base import (
    DeviceError,
    DeviceState,
    DeviceUnavailable,
    ScannerReader,
    ScanSink,
    StatusSink,
    UnsupportedDeviceUrl,
)
from drivers.decoders import Decoded, Decoder, make_decoder
from drivers.urls import DeviceUrl

Roi = tuple[float, float, float, float]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
QUERY_KEYS = ("width", "height", "fps", "realtime", "roi")


def parse_roi(value: str | Iterable[float] | None) -> Roi | None:
    """(x, y, w, h) as fractions of the frame, from a tuple or "x,y,w,h"; None means the whole frame."""
    if value is None:
        return None
    try:
        parts = [float(p) for p in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        parts = []
    if len(parts) == 4:
        x, y, w, h = parts
        eps = 1e-9
        if 0 <= x < 1 and 0 <= y < 1 and w > 0 and h > 0 and x + w <= 1 + eps and y + h <= 1 + eps:
            return x, y, w, h
    raise ValueError(
        f"camera roi {value!r}: expected x,y,w,h as fractions of the frame inside 0..1, e.g. 0.25,0.1,0.5,0.8"
    )


class Debounce:
    """Which texts are new in this frame. A text stays "present" until it has been missing from `frames`
    consecutive frames spanning at least `seconds`; only a text that is not present is new."""

    def __init__(self, frames: int = 10, seconds: float = 1.0):
        if frames < 1 or seconds < 0:
            raise ValueError("debounce needs frames >= 1 and seconds >= 0")
        self.frames = frames
        self.seconds = seconds
        self._present: dict[str, list[float]] = {}  # text -> [last seen t, frames missing since]

    def update(self, texts: Iterable[str], t: float) -> list[str]:
        seen = list(dict.fromkeys(texts))
        for text, state in list(self._present.items()):
            if text in seen:
                continue
            state[1] += 1
            if state[1] >= self.frames and t - state[0] >= self.seconds:
                del self._present[text]
        new = [text for text in seen if text not in self._present]
        for text in seen:
            self._present[text] = [t, 0]
        return new

    def reset(self) -> None:
        self._present.clear()


class FramePipeline:
    """One frame in, the scans to emit out: ROI crop → grayscale → decode → de-duplicate → debounce.

    Pure apart from the debounce state; `t` is the frame's time in seconds (a file's own timestamps, or a
    monotonic clock for live cameras), so replaying a clip gives the same scans every time."""

    def __init__(
        self,
        decoder: Decoder,
        roi: Roi | str | None = None,
        *,
        repeat_after_frames: int = 10,
        repeat_after_seconds: float = 1.0,
    ):
        self.decoder = decoder
        self.roi = parse_roi(roi)
        self._debounce = Debounce(repeat_after_frames, repeat_after_seconds)
        self._box: tuple[tuple[int, int], tuple[int, int, int, int]] | None = None

    def gray(self, frame: np.ndarray) -> np.ndarray:
        """The part of `frame` the decoder sees: the region of interest, in grayscale."""
        if self.roi is not None:
            x0, y0, x1, y1 = self._roi_box(frame.shape[1], frame.shape[0])
            frame = frame[y0:y1, x0:x1]
        if frame.ndim == 2:
            return frame
        code = cv2.COLOR_BGRA2GRAY if frame.shape[2] == 4 else cv2.COLOR_BGR2GRAY
        return cv2.cvtColor(frame, code)

    def decode(self, frame: np.ndarray) -> list[Decoded]:
        """Every code in the frame, one per text (QR and barcode of one payment screen count once)."""
        unique: dict[str, Decoded] = {}
        for found in self.decoder.decode(self.gray(frame)):
            unique.setdefault(found.text, found)
        return list(unique.values())

    def process(self, frame: np.ndarray, t: float) -> list[Decoded]:
        """The codes to emit for this frame: those not already present in the frames before it."""
        found = {d.text: d for d in self.decode(frame)}
        return [found[text] for text in self._debounce.update(found, t)]

    def reset(self) -> None:
        self._debounce.reset()

    def _roi_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        if self._box is None or self._box[0] != (width, height):
            assert self.roi is not None
            x, y, w, h = self.roi
            x0, y0 = round(x * width), round(y * height)
            x1, y1 = max(x0 + 1, min(width, round((x + w) * width))), max(y0 + 1, min(height, round((y + h) * height)))
            self._box = ((width, height), (x0, y0, x1, y1))
        return self._box[1]


class _Source(Protocol):
    live: bool
    description: str

    def frames(self) -> Iterator[tuple[np.ndarray, float]]:
        """(BGR frame, time in seconds) until a file ends; a live source raises DeviceUnavailable when it fails."""
        ...

    def close(self) -> None: ...


class _CaptureSource:
    """A cv2.VideoCapture: a live camera, a video file or an image sequence."""

    def __init__(self, capture: cv2.VideoCapture, name: str, live: bool, fps: float | None):
        self.capture = capture
        self.name = name
        self.live = live
        self._fps = fps
        width = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH))
        height = int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        rate = fps or capture.get(cv2.CAP_PROP_FPS) or 0
        self.description = f"{'camera' if live else 'playing'} {name} ({width}x{height}, {rate:g} fps)"

    def frames(self) -> Iterator[tuple[np.ndarray, float]]:
        fps = self._fps or self.capture.get(cv2.CAP_PROP_FPS)
        fps = fps if fps and fps > 0 else 30.0
        use_pos = self._fps is None  # an explicit fps overrides the container's clock (image sequences have none)
        index, last = 0, -1.0
        while True:
            ok, frame = self.capture.read()
            if not ok or frame is None:
                if self.live:
                    raise DeviceUnavailable(
                        f"camera {self.name} stopped delivering frames (unplugged, or taken by another program?)"
                    )
                return
            if self.live:
                t = time.monotonic()
            else:
                pos = self.capture.get(cv2.CAP_PROP_POS_MSEC) / 1000.0 if use_pos else -1.0
                if use_pos and pos > last:
                    t = pos
                else:
                    # The container's clock is missing or stuck: fall back to the frame index for good.
                    use_pos = False
                    t = max(index / fps, last + 1e-6)
                last = t
            index += 1
            yield frame, t

    def close(self) -> None:
        self.capture.release()


class _DirectorySource:
    """Every image in a directory, in name order, at `fps`."""

    live = False

    def __init__(self, files: list[str], name: str, fps: float):
        self._files = files
        self._fps = fps
        self.description = f"playing {name} ({len(files)} images, {fps:g} fps)"

    def frames(self) -> Iterator[tuple[np.ndarray, float]]:
        for index, path in enumerate(self._files):
            frame = cv2.imread(path, cv2.IMREAD_COLOR)
            if frame is not None:  # a stray non-image file is skipped, not fatal
                yield frame, index / self._fps

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class _Target:
    kind: str  # "index" | "device" | "file"
    path: str
    index: int | None = None

    @property
    def name(self) -> str:
        return f"{self.index} (/dev/video{self.index})" if self.kind == "index" else self.path


def _target(url: DeviceUrl) -> _Target:
    path = url.path
    if path.isdigit():
        return _Target("index", f"/dev/video{path}", int(path))
    if not path.startswith("/"):
        raise UnsupportedDeviceUrl(
            f"{url.text}: expected camera:INDEX (camera:0), camera:///dev/video0, or camera:///absolute/path/clip.mp4"
        )
    return _Target("device" if path.startswith("/dev/") else "file", path)


def _flag(value: str | bool) -> bool:
    if isinstance(value, bool):
        return value
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


class CameraScanner(ScannerReader):
    """Decodes codes from a camera (reopened with back-off when it fails) or a clip (played once, then ended)."""

    def __init__(
        self,
        target: _Target,
        device_id: str,
        on_scan: ScanSink,
        on_status: StatusSink,
        *,
        decoder: str | Decoder = "zxing",
        formats: Iterable[str] = ("qr", "code128"),
        roi: Roi | str | None = None,
        repeat_after_frames: int = 10,
        repeat_after_seconds: float = 1.0,
        realtime: bool = False,
        fps: float | None = None,
        width: int | None = None,
        height: int | None = None,
        backoff: Backoff | None = None,
    ):
        super().__init__(device_id, on_scan, on_status, backoff)
        self.target = target
        # Built now, not on first frame: a missing libzbar0 or a bad ROI stops the agent at start with its fix.
        chosen = make_decoder(decoder, formats) if isinstance(decoder, str) else decoder
        self.pipeline = FramePipeline(
            chosen, roi, repeat_after_frames=repeat_after_frames, repeat_after_seconds=repeat_after_seconds
        )
        self.realtime = realtime
        self.fps = fps
        self.size = (width, height)

    @classmethod
    def from_url(
        cls, url: DeviceUrl, device_id: str, on_scan: ScanSink, on_status: StatusSink, **options: Any
    ) -> CameraScanner:
        unknown = sorted(set(url.query) - set(QUERY_KEYS))
        if unknown:
            raise UnsupportedDeviceUrl(
                f"{url.text}: unknown camera option(s) {', '.join(unknown)}; known: {', '.join(QUERY_KEYS)}"
            )
        # __init__'s keyword arguments, named at run time by the URL and the settings: Python checks the names.
        from_query: dict[str, Any] = {}
        try:
            for key in ("width", "height"):
                if key in url.query:
                    from_query[key] = int(url.query[key])
            if "fps" in url.query:
                from_query["fps"] = float(url.query["fps"])
            if "realtime" in url.query:
                from_query["realtime"] = _flag(url.query["realtime"])
            if "roi" in url.query:
                from_query["roi"] = parse_roi(url.query["roi"])
        except ValueError as exc:
            raise UnsupportedDeviceUrl(f"{url.text}: {exc}") from None
        from_query.update({k: v for k, v in options.items() if v is not None})
        return cls(_target(url), device_id, on_scan, on_status, **from_query)

    def run_once(self, stop: threading.Event) -> bool | None:
        source = self._open()
        try:
            self.set_status(DeviceState.CONNECTED, source.description)
            if not source.live:
                self.pipeline.reset()  # a clip's clock starts again at 0
            return self._read(source, stop)
        except cv2.error as exc:
            raise DeviceError(f"camera {self.target.name}: OpenCV failed: {exc}") from exc
        finally:
            source.close()

    def _read(self, source: _Source, stop: threading.Event) -> bool | None:
        started: float | None = None
        first = True
        for frame, t in source.frames():
            if stop.is_set():
                return None
            if source.live and first:
                self.worked()  # a later failure retries quickly again
            first = False
            if self.realtime and not source.live:
                started = time.monotonic() - t if started is None else started
                if stop.wait(max(0.0, started + t - time.monotonic())):
                    return None
            for found in self.pipeline.process(frame, t):
                self.emit(found.text, found.symbology)
        return True  # only a file gets here: live sources raise when they stop delivering

    def _open(self) -> _Source:
        target = self.target
        if target.kind in ("index", "device"):
            return self._open_camera(target)
        path = target.path
        if os.path.isdir(path):
            files = sorted(str(p) for p in Path(path).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise DeviceUnavailable(f"camera directory {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            return _DirectorySource(files, path, self.fps or 30.0)
        if "%" in path:
            if not glob.glob(re.sub(r"%(0\d+)?d", "*", path)):
                raise DeviceUnavailable(f"camera image sequence {path}: no file matches the pattern")
        elif not os.path.exists(path):
            raise DeviceUnavailable(f"camera file {path} not found")
        capture = cv2.VideoCapture(path)
        if not capture.isOpened():
            capture.release()
            raise DeviceError(
                f"camera file {path} cannot be read: not a video or image sequence this OpenCV can decode"
            )
        return _CaptureSource(capture, path, live=False, fps=self.fps)

    def _open_camera(self, target: _Target) -> _Source:
        backend = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
        if not os.path.exists(target.path):
            raise DeviceUnavailable(f"camera {target.name} not found")
        capture = cv2.VideoCapture(target.index if target.index is not None else os.path.realpath(target.path), backend)
        if not capture.isOpened():
            capture.release()
            raise DeviceUnavailable(
                f"camera {target.name} cannot be opened: in use by another program, or no permission (is the agent in the video group?)"
            )
        width, height = self.size
        if width:
            capture.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        if height:
            capture.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        if self.fps:
            capture.set(cv2.CAP_PROP_FPS, self.fps)
        # Decode the newest frame, not one queued behind: a stale frame is a late scan.
        capture.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        return _CaptureSource(capture, target.name, live=True, fps=None)
