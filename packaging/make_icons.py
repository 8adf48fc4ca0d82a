"""Render the app icon (resources/icons/subspec-studio.svg) to the PNG sizes a Linux desktop asks for, a
Windows .ico and a macOS .icns. The outputs are committed; run again after editing the SVG:

    QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/make_icons.py

Qt renders the SVG, so nothing beyond the app's own dependencies is needed. ICO and ICNS both accept
PNG-compressed entries, so each is a small header and directory in front of the same PNG bytes.
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
from PySide6.QtGui import QGuiApplication, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer

ICONS = Path(__file__).resolve().parent.parent / "resources" / "icons"
NAME = "subspec-studio"
PNG_SIZES = (16, 24, 32, 48, 64, 128, 256, 512)
ICO_SIZES = (16, 24, 32, 48, 64, 128, 256)
# ICNS entry types holding PNG data, by pixel size (icp4/icp5 need macOS 10.7+, as any PyInstaller app does).
ICNS_TYPES = {16: b"icp4", 32: b"icp5", 64: b"icp6", 128: b"ic07", 256: b"ic08", 512: b"ic09"}


def render(renderer: QSvgRenderer, size: int) -> bytes:
    image = QImage(size, size, QImage.Format.Format_ARGB32_Premultiplied)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(data)


def ico(pngs: dict[int, bytes]) -> bytes:
    sizes = sorted(pngs)
    header = struct.pack("<HHH", 0, 1, len(sizes))  # reserved, type 1 (icon), count
    offset = len(header) + 16 * len(sizes)
    entries, blobs = b"", b""
    for size in sizes:
        blob = pngs[size]
        side = 0 if size >= 256 else size  # 0 means 256 in the one-byte width and height fields
        entries += struct.pack("<BBBBHHII", side, side, 0, 0, 1, 32, len(blob), offset)
        offset += len(blob)
        blobs += blob
    return header + entries + blobs


def icns(pngs: dict[int, bytes]) -> bytes:
    body = b"".join(ICNS_TYPES[s] + struct.pack(">I", 8 + len(pngs[s])) + pngs[s] for s in sorted(pngs))
    return b"icns" + struct.pack(">I", 8 + len(body)) + body


def main() -> int:
    if QGuiApplication.instance() is None:
        main.app = QGuiApplication(sys.argv[:1])  # painting needs one, alive until the end
    renderer = QSvgRenderer(str(ICONS / f"{NAME}.svg"))
    if not renderer.isValid():
        print(f"error: cannot read {ICONS / f'{NAME}.svg'}", file=sys.stderr)
        return 1
    pngs = {size: render(renderer, size) for size in sorted(set(PNG_SIZES) | set(ICNS_TYPES))}
    for size in PNG_SIZES:
        (ICONS / f"{NAME}-{size}.png").write_bytes(pngs[size])
    (ICONS / f"{NAME}.ico").write_bytes(ico({s: pngs[s] for s in ICO_SIZES}))
    (ICONS / f"{NAME}.icns").write_bytes(icns({s: pngs[s] for s in ICNS_TYPES}))
    print(f"wrote {len(PNG_SIZES)} PNGs, {NAME}.ico and {NAME}.icns to {ICONS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
