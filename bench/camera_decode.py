"""Camera decoding throughput: the scanner's frame pipeline against the decoder called bare.

For each decoder (zxing-cpp, pyzbar), frame size (640x480, 1280x720) and scene (a textured counter with no code;
a phone showing a WeChat payment screen, QR code + Code128 of the same 18 digits), times on the same pre-made
frames in the same run:

    bare      decoder.decode(gray) on frames already converted to grayscale
    pipeline  FramePipeline.process(bgr, t): grayscale conversion + decode + de-duplication + debounce

and prints frames per second and the overhead ratio pipeline/bare (best of several rounds, taken in turns).
Pinned to one CPU with OpenCV on one thread, so the figure is what one core of a till sustains.

    python bench/camera_decode.py [--frames 100] [--rounds 3] [--decoders zxing,pyzbar] [--sizes 640x480,1280x720]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import barcode
import cv2
import numpy as np
import segno

from drivers.base import DeviceError
from drivers.camera import FramePipeline
from drivers.decoders import Decoder, make_decoder

AUTH_CODE = "134567890123456789"  # WeChat Pay auth code: 18 digits, prefix 10-15
DISTINCT = 8  # different frames cycled through, each with its own sensor noise and shake
TARGET_FPS = 30.0
TARGET_RATIO = 1.3


def desk(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    # A textured counter top: a flat frame would flatter every decoder.
    return cv2.GaussianBlur(rng.normal(110, 40, (height, width)).astype(np.float32), (0, 0), 3)


def payment_screen(height: int) -> np.ndarray:
    """A phone's payment page sized for a frame `height` tall: Code128 over QR, both of AUTH_CODE."""
    module = max(2, round(height / 240))
    modules = np.array([c == "1" for c in barcode.Code128(AUTH_CODE).build()[0]])
    bars = np.where(np.repeat(modules, module), 0, 255).astype(np.uint8)
    strip = np.tile(bars, (module * 50, 1))
    qr = np.array(list(segno.make_qr(AUTH_CODE, error="m").matrix_iter(scale=round(module * 2.5), border=0)), np.uint8)
    qr = np.where(qr == 1, 0, 255).astype(np.uint8)
    screen_h = int(height * 0.9)
    screen_w = max(int(screen_h * 0.7), strip.shape[1] + 20 * module)
    screen = np.full((screen_h, screen_w), 245, np.uint8)
    top = screen_h // 12
    x = (screen_w - strip.shape[1]) // 2
    screen[top : top + strip.shape[0], x : x + strip.shape[1]] = strip
    y = top + strip.shape[0] + 30 * module
    x = (screen_w - qr.shape[1]) // 2
    screen[y : y + qr.shape[0], x : x + qr.shape[1]] = qr
    return screen


def scene(width: int, height: int, with_code: bool, seed: int) -> list[np.ndarray]:
    """DISTINCT BGR frames of one scene: the same counter, fresh sensor noise, a few pixels of hand shake."""
    rng = np.random.default_rng(seed)
    base = desk(width, height, rng)
    screen = payment_screen(height).astype(np.float32) if with_code else None
    frames = []
    for i in range(DISTINCT):
        frame = base.copy()
        if screen is not None:
            y = (height - screen.shape[0]) // 2 + i % 3
            x = (width - screen.shape[1]) // 2 + (i * 2) % 5
            frame[y : y + screen.shape[0], x : x + screen.shape[1]] = screen
        frame = np.clip(frame + rng.normal(0, 4, frame.shape), 0, 255).astype(np.uint8)
        frames.append(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    return frames


def timed(run: Callable[[int], object], frames: int) -> float:
    started = time.perf_counter()
    for i in range(frames):
        run(i)
    return (time.perf_counter() - started) / frames


def measure(decoder: Decoder, bgr: list[np.ndarray], frames: int, rounds: int) -> tuple[float, float, bool]:
    """(bare seconds per frame, pipeline seconds per frame, whether the code was read), best of `rounds`."""
    gray = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in bgr]
    read = any(d.text == AUTH_CODE for d in decoder.decode(gray[0]))
    bare = pipeline = float("inf")
    for _ in range(rounds):
        # Taken in turns, so a slow patch of the machine hits both sides rather than one.
        bare = min(bare, timed(lambda i: decoder.decode(gray[i % DISTINCT]), frames))
        chain = FramePipeline(decoder)
        pipeline = min(pipeline, timed(lambda i, chain=chain: chain.process(bgr[i % DISTINCT], i / TARGET_FPS), frames))
    return bare, pipeline, read


def pin_to_one_core() -> str:
    cv2.setNumThreads(1)
    # zxing-cpp and zbar decode on the calling thread and start none of their own.
    if hasattr(os, "sched_setaffinity"):
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned (no sched_setaffinity here)"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = [f"Python {sys.version.split()[0]}", f"OpenCV {cv2.__version__}"]
    for package in ("zxing-cpp", "pyzbar"):
        try:
            parts.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            parts.append(f"{package} not installed")
    return ", ".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100, help="frames timed per measurement (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per measurement, best kept (default 3)")
    parser.add_argument("--decoders", default="zxing,pyzbar")
    parser.add_argument("--sizes", default="640x480,1280x720")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in size.split("x")) for size in args.sizes.split(",")]

    print(f"camera decoding: {pin_to_one_core()}, OpenCV threads {cv2.getNumThreads()}; {versions()}")
    print(f"{args.frames} frames per measurement, best of {args.rounds} rounds; formats qr+code128")
    print()
    header = f"{'decoder':<8} {'frame':<10} {'scene':<15} {'bare fps':>9} {'pipeline fps':>13} {'ratio pipeline/bare':>20}  read"
    print(header)
    print("-" * len(header))
    verdicts: list[str] = []
    for name in args.decoders.split(","):
        try:
            decoder = make_decoder(name, ("qr", "code128"))
        except DeviceError as exc:
            print(f"{name:<8} unavailable: {exc}")
            continue
        worst_fps, worst_ratio = float("inf"), 0.0
        for width, height in sizes:
            for with_code, label in ((False, "no code"), (True, "payment screen")):
                bgr = scene(width, height, with_code, seed=width + with_code)
                bare, pipe, read = measure(decoder, bgr, args.frames, args.rounds)
                ratio = pipe / bare
                mark = ("yes" if read else "NO") if with_code else "-"
                print(
                    f"{name:<8} {f'{width}x{height}':<10} {label:<15} {1 / bare:>9.1f} {1 / pipe:>13.1f} {ratio:>20.2f}  {mark}"
                )
                if height >= 720:
                    worst_fps, worst_ratio = min(worst_fps, 1 / pipe), max(worst_ratio, ratio)
        if worst_ratio:
            met = worst_fps >= TARGET_FPS and worst_ratio <= TARGET_RATIO
            verdicts.append(
                f"{name}: {'met' if met else 'NOT met'} (720p worst: {worst_fps:.1f} fps, ratio {worst_ratio:.2f})"
            )
    print()
    print(f"target: pipeline >= {TARGET_FPS:g} fps at 720p on one core, ratio pipeline/bare <= {TARGET_RATIO}")
    for verdict in verdicts:
        print(f"  {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
