"""Image files built to hurt the reader, and odd ones that are fine: each is read, or refused in
one sentence, quickly, and none reaches a decoder outside preprocess.FORMATS (the EPS plugin
ran Ghostscript). The ordinary formats and the preparation itself: tests/test_preprocess.py."""

from __future__ import annotations

import io
import os
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import EpsImagePlugin, Image, ImageDraw, ImageFile, PngImagePlugin

from mnist_cnn.core.errors import ImageInputError
from mnist_cnn.predict.preprocess import (
    FORMATS,
    IMAGE_TYPES,
    MAX_GIF_STEPS,
    MAX_JPEG_SCANS,
    MAX_JPEG_STEPS,
    MAX_PNG_CHUNKS,
    prepare_digit,
    read_image_bytes,
    read_image_file,
)
from tests.conftest import run_cli

# Refused from the header or the structure, or a small image read: milliseconds here; the bound
# leaves room for a loaded CI machine. The dearest image accepted costs about 1.3 s (preprocess).
QUICK_S = 1.0
EXAMPLE_S = 2.0  # Each fuzzed file, read and prepared, or answered by the server.
ONE_SENTENCE_END = f"use a {IMAGE_TYPES} file"

pytestmark = [
    # A fuzzed header can claim 100 megapixels: Pillow warns before the size check refuses it
    # (outside pytest, preprocess silences the warning; pytest resets the filters for each test).
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
    pytest.mark.filterwarnings("ignore:Invalid APNG"),  # A fuzzed APNG: Pillow falls back to its first image.
]


def seven(size: int = 32, mode: str = "L") -> Image.Image:
    """A white 7 on black, ``size`` pixels a side."""
    image = Image.new("L", (size, size), 0)
    ImageDraw.Draw(image).line(
        [(size * 0.25, size * 0.2), (size * 0.75, size * 0.2), (size * 0.4, size * 0.8)], fill=255, width=size // 8
    )
    return image.convert(mode)


def encoded(image: Image.Image, format: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(width: int, height: int, before: bytes = b"", color: int = 0, bits: int = 8) -> bytes:
    """A PNG built by hand: its header, the chunks ``before``, rows of zeros (zlib), the end. A
    20-megapixel line of zeros compresses to 20 KB."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    row = b"\x00" * (1 + (width * channels * bits + 7) // 8)  # Filter type 0, then the pixels.
    header = struct.pack(">IIBBBBB", width, height, bits, color, 0, 0, 0)
    rows = zlib.compress(row * height, 9)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + before + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header(width: int, height: int) -> bytes:
    """A PNG that says ``width`` x ``height`` (8-bit gray) and holds no pixels: a hundred bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def with_fixed_crcs(content: bytes) -> bytes:
    """A PNG's chunks with their checksums made right again, so that a mutation reaches the
    decoder instead of Pillow's CRC check; other files as they are."""
    if not content.startswith(PNG_SIGNATURE):
        return content
    fixed, position = bytearray(content), len(PNG_SIGNATURE)
    while position + 12 <= len(fixed):
        length = int.from_bytes(fixed[position : position + 4], "big")
        end = position + 8 + length
        if end + 4 > len(fixed):
            break
        fixed[end : end + 4] = struct.pack(">I", zlib.crc32(bytes(fixed[position + 4 : end])))
        position = end + 4
    return bytes(fixed)


def psd(width: int = 8, height: int = 8) -> bytes:
    """A minimal Photoshop file (Pillow reads them but cannot write them): one 8-bit gray channel."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 1, height, width, 8, 1)
    sections = struct.pack(">III", 0, 0, 0)  # No colour data, no resources, no layers.
    return header + sections + struct.pack(">H", 0) + bytes(width * height)  # Raw pixels.


def rle8_bmp(width: int, height: int, body: bytes) -> bytes:
    """An 8-bit grayscale BMP whose pixels are run-length compressed (``body``, bottom row first)."""
    palette = b"".join(bytes([level, level, level, 0]) for level in range(256))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(body), 2835, 2835, 256, 0)
    return b"BM" + struct.pack("<IHHI", offset + len(body), 0, 0, offset) + info + palette + body


def rle8_rows(image: Image.Image) -> bytes:
    """The rows of an L image as RLE8: runs of up to 255 equal pixels, each row ended."""
    body = bytearray()
    for row in np.asarray(image)[::-1]:
        values = row.tobytes()
        start = 0
        while start < len(values):
            end = start + 1
            while end < len(values) and end - start < 255 and values[end] == values[start]:
                end += 1
            body += bytes([end - start, values[start]])
            start = end
        body += b"\x00\x00"
    return bytes(body + b"\x00\x01")


def jpeg_with_scans(extra: int) -> bytes:
    """A 64x64 progressive JPEG (Pillow's: 6 scans) with ``extra`` AC scans more, each one
    end-of-band run (13 bytes a scan, and libjpeg reads each over the whole image)."""
    data = encoded(Image.new("L", (64, 64), 128), "JPEG", progressive=True)
    end = data.rindex(b"\xff\xd9")
    table = b"\xff\xc4" + struct.pack(">HB16BB", 20, 0x10, 1, *[0] * 15, 0xE0)  # AC table 0: EOB14 is the code 0.
    run = bytes([0b01111111, 0xFF, 0x00])  # 0, fourteen 1s (a run of 32,767 blocks), a padding 1; 0xFF stuffed.
    scan = b"\xff\xda" + struct.pack(">HBBBBBB", 8, 1, 1, 0x00, 1, 63, 0) + run
    return data[:end] + table + scan * extra + data[end:]


def gif_with_comment_blocks(count: int) -> bytes:
    """Pillow's GIF of a seven with a comment of ``count`` one-byte blocks before the image."""
    data = encoded(seven(), "GIF")
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    return data[:position] + b"!\xfe" + b"\x01x" * count + b"\x00" + data[position:]


def assert_refused(content: bytes, expected: str, name: str = "upload") -> str:
    """read_image_bytes refuses ``content`` quickly with one sentence that names the file and holds ``expected``."""
    start = time.perf_counter()
    with pytest.raises(ImageInputError) as refused:
        read_image_bytes(content, name)
    elapsed = time.perf_counter() - start
    message = str(refused.value)
    assert_one_sentence(message, name)
    assert expected in message
    assert elapsed < QUICK_S, f"{elapsed:.2f} s to refuse it"
    return message


def assert_one_sentence(message: str, name: str = "upload") -> None:
    assert message.startswith(f"{name}: ") and "\n" not in message, message
    assert "Error" not in message and "Traceback" not in message, message  # For people: no exception class.


def test_the_formats_read_are_stated_once() -> None:
    from mnist_cnn.serve import app

    assert list(FORMATS) == ["PNG", "JPEG", "BMP", "GIF", "WEBP"]
    assert IMAGE_TYPES == "PNG, JPEG, BMP, GIF or WebP"
    assert app.IMAGE_TYPES is IMAGE_TYPES  # The server's documentation and its messages say the same.


def fake_ghostscript(folder: Path) -> tuple[Path, Path]:
    """A ``gs`` that writes a marker each time it runs (and answers --version): its folder for
    PATH, and the marker, which must never appear."""
    bin_folder, marker = folder / "bin", folder / "ghostscript-ran"
    bin_folder.mkdir()
    script = bin_folder / "gs"
    script.write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\nexit 0\n')
    script.chmod(0o755)
    return bin_folder, marker


def test_an_eps_file_never_runs_ghostscript(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_folder, marker = fake_ghostscript(tmp_path)
    monkeypatch.setenv("PATH", f"{bin_folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # Pillow looks for gs once per process.
    eps = encoded(seven(), "EPS")
    assert_refused(eps, f"PostScript (EPS) images are not read; {ONE_SENTENCE_END}")
    path = tmp_path / "seven.eps"
    path.write_bytes(eps)
    with pytest.raises(ImageInputError, match="seven.eps: PostScript"):
        read_image_file(path)
    assert not marker.exists()


def test_predict_refuses_an_eps_and_a_huge_header_in_one_line_each(smoke_run: Path, tmp_path: Path) -> None:
    """The real command, with a gs on its PATH: exit 2, one line per file, no traceback, and
    neither Ghostscript nor Pillow's decompression-bomb warning."""
    bin_folder, marker = fake_ghostscript(tmp_path)
    eps, huge = tmp_path / "drawing.eps", tmp_path / "huge.png"
    eps.write_bytes(encoded(seven(), "EPS"))
    huge.write_bytes(png_header(10_000, 10_000))  # 100 megapixels: over Pillow's own warning limit too.
    result = run_cli("predict", smoke_run, eps, huge, env={"PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"mnist-cnn: error: {eps}: PostScript (EPS) images are not read; {ONE_SENTENCE_END}",
        f"mnist-cnn: error: {huge}: 10000x10000 is over the 20 megapixel limit; use a smaller image",
    ]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: encoded(seven(), "TIFF"), "TIFF images are not read"),
        (lambda: encoded(seven(), "TIFF", compression="tiff_lzw"), "TIFF images are not read"),
        (lambda: encoded(seven(mode="RGB"), "PDF"), "PDF images are not read"),
        (psd, "Photoshop (PSD) images are not read"),
        (lambda: encoded(seven(mode="F"), "SPIDER"), "not a readable image"),
        (lambda: b"\x00\x00\x00\x18ftypheic" + bytes(64), "HEIC images are not read"),
        (lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\n", "PostScript (EPS) images are not read"),
    ],
    ids=["tiff", "tiff-lzw", "pdf", "psd", "spider", "heic", "eps-text"],
)
def test_other_formats_are_refused_by_name(make, expected: str) -> None:
    """Pillow reads TIFF, PSD and SPIDER (PSD and SPIDER failed with EOFError, a 500 from the
    server): none of them is read now, and a known one is named."""
    assert assert_refused(make(), expected).endswith(ONE_SENTENCE_END)


@pytest.mark.parametrize(("width", "height"), [(19_999_999, 1), (1, 19_999_999), (10_001, 100)])
def test_a_line_of_pixels_is_refused_from_its_header(width: int, height: int) -> None:
    """Under 20 megapixels, but 20 million pixels long: 13 s and 1 GB to prepare, before."""
    content = png(width, height)
    assert len(content) < 64_000
    assert_refused(content, f"{width}x{height} is over the limit of 10,000 pixels a side; use a smaller image")


def test_an_image_of_10000_pixels_a_side_is_read_and_prepared_quickly() -> None:
    line = Image.new("L", (10_000, 200), 0)
    line.paste(255, (4000, 50, 6000, 150))
    start = time.perf_counter()
    frame = prepare_digit(read_image_bytes(encoded(line, "PNG")))
    assert frame.shape == (28, 28) and frame.max() > 0.5
    assert time.perf_counter() - start < QUICK_S


@pytest.mark.parametrize(("width", "height"), [(100_000, 100_000), (4473, 4473), (65_535, 65_535)])
def test_a_header_over_20_megapixels_is_refused_before_decoding(width: int, height: int) -> None:
    """A 65-byte file that says up to 10 gigapixels: refused from its header, with the size limit."""
    assert_refused(png_header(width, height), "megapixel limit; use a smaller image")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (png(64, 64, before=chunk(b"prIv", b"") * (MAX_PNG_CHUNKS + 1)), "over 20,000 chunks"),
        (png(64, 64, before=chunk(b"tEXt", b"k\x00") * (MAX_PNG_CHUNKS + 1)), "over 20,000 chunks"),
        (
            (lambda jpeg: jpeg[:2] + b"\xff\xfe\x00\x02" * (MAX_JPEG_STEPS + 1) + jpeg[2:])(encoded(seven(), "JPEG")),
            "over 10,000 segments before its image",
        ),
        (
            (lambda jpeg, at: jpeg[:at] + bytes(MAX_JPEG_STEPS + 1) + jpeg[at:])(  # Stray bytes after the APP0 segment.
                encoded(seven(), "JPEG"), 4 + int.from_bytes(encoded(seven(), "JPEG")[4:6], "big")
            ),
            "segments",
        ),
        (jpeg_with_scans(MAX_JPEG_SCANS), "106 scans, at most 100 are read"),
        (gif_with_comment_blocks(MAX_GIF_STEPS + 1), "over 10,000 blocks before its image"),
        (rle8_bmp(1001, 1000, b"\x00\x01"), "1001x1000 is over the 1 megapixel limit of a run-length compressed BMP"),
    ],
    ids=["png-chunks", "png-text-chunks", "jpeg-comments", "jpeg-stray-bytes", "jpeg-scans", "gif-blocks", "bmp-rle"],
)
def test_files_built_to_keep_the_parser_busy_are_refused(content: bytes, expected: str) -> None:
    """Pillow parses PNG chunks, JPEG segments and GIF blocks in Python, decodes BMP runs in
    Python, and libjpeg reads every scan over the whole image: 10 MB of each took seconds."""
    message = assert_refused(content, expected)
    assert message.endswith("save the image again as a plain PNG or JPEG") or "uncompressed BMP" in message


@pytest.mark.parametrize(("format", "side", "decoded"), [("JPEG", 2100, 525), ("JPEG", 1023, 1023), ("MPO", 1200, 600)])
def test_a_large_jpeg_is_decoded_at_a_fraction_of_its_size(format: str, side: int, decoded: int) -> None:
    """Never under WORKING_SIDE (512) on the longer side: what prepare_digit shrinks every image to."""
    options = {"save_all": True, "append_images": [seven(side, "RGB")]} if format == "MPO" else {}
    image = read_image_bytes(encoded(seven(side, "RGB"), format, **options))
    assert image.format == format and image.size == (decoded, decoded)


def test_the_same_structures_within_the_limits_are_read() -> None:
    for content in (
        png(64, 64, before=chunk(b"prIv", b"") * 1000),
        jpeg_with_scans(MAX_JPEG_SCANS - 6),  # Pillow's 6 scans and 94 more.
        gif_with_comment_blocks(1000),
        rle8_bmp(64, 64, rle8_rows(seven(64))),
    ):
        start = time.perf_counter()
        image = read_image_bytes(content)
        assert image.size in ((64, 64), (32, 32))
        assert time.perf_counter() - start < QUICK_S
    frame = prepare_digit(read_image_bytes(rle8_bmp(64, 64, rle8_rows(seven(64)))))
    np.testing.assert_allclose(frame, prepare_digit(seven(64)), atol=1e-6)


@pytest.mark.parametrize("kind", [b"zTXt", b"iTXt"])
def test_a_text_chunk_that_inflates_to_16_mb_is_refused_quickly(kind: bytes) -> None:
    bomb = zlib.compress(bytes(16 * 2**20), 9)  # 16 KB that inflate to 16 MB.
    data = b"comment\x00\x00" + bomb if kind == b"zTXt" else b"comment\x00\x01\x00\x00\x00" + bomb
    assert len(bomb) < PngImagePlugin.MAX_TEXT_CHUNK  # Pillow's limit is on the inflated text.
    assert_refused(png(64, 64, before=chunk(kind, data)), "not a readable image")


@pytest.mark.parametrize("format", ["PNG", "JPEG", "GIF", "BMP", "WEBP"])
@pytest.mark.parametrize("kept", [0.5, 0.9])
def test_a_truncated_file_is_refused(format: str, kept: float) -> None:
    content = encoded(seven(64, "RGB"), format)
    assert_refused(content[: int(len(content) * kept)], "not a readable image")


@pytest.mark.parametrize(
    "failure",
    [EOFError, struct.error, IndexError, ZeroDivisionError, MemoryError, KeyError, TypeError, RuntimeError]
    + [ValueError, OSError, SyntaxError, RecursionError, Image.DecompressionBombError],
)
@pytest.mark.parametrize("where", ["open", "decode"])
def test_whatever_a_decoder_raises_becomes_the_sentence(
    failure: type[BaseException], where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's plugins raise almost anything on damaged bytes; every failure is the same sentence."""

    def fail(*args: Any, **kwargs: Any) -> None:
        raise failure("a decoder's own words")

    if where == "open":
        monkeypatch.setattr(PngImagePlugin.PngImageFile, "_open", fail)
    else:
        monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    message = str(pytest.raises(ImageInputError, read_image_bytes, encoded(seven(), "PNG"), "upload").value)
    assert_one_sentence(message)
    assert "a decoder's own words" not in message
    assert ("megapixel limit" if failure is Image.DecompressionBombError and where == "open" else "readable") in message


def animation(format: str, **options: Any) -> bytes:
    first, second = seven(48), seven(48).transpose(Image.Transpose.ROTATE_90)
    mode = "P" if format == "GIF" else "RGB"
    return encoded(first.convert(mode), format, save_all=True, append_images=[second.convert(mode)], **options)


@pytest.mark.parametrize(("format", "options"), [("GIF", {}), ("WEBP", {"lossless": True}), ("PNG", {})])
def test_an_animation_is_read_by_its_first_frame(format: str, options: dict[str, Any]) -> None:
    image = read_image_bytes(animation(format, **options))
    frame = prepare_digit(image)
    first = prepare_digit(seven(48))
    second = prepare_digit(seven(48).transpose(Image.Transpose.ROTATE_90))
    assert np.abs(frame - first).max() < 0.05 < np.abs(frame - second).max()


def odd_images() -> Iterator[tuple[str, bytes]]:
    """Decodable images a reader meets rarely: each mode Pillow gives FORMATS' files, and slivers."""
    digit = seven(48)
    yield "1x1 white", encoded(Image.new("L", (1, 1), 255), "PNG")
    yield "1x1 black", encoded(Image.new("L", (1, 1), 0), "BMP")
    for size in ((1, 300), (300, 1), (2, 700), (700, 3)):
        sliver = Image.new("L", size, 0)
        sliver.paste(255, (0, 0, max(1, size[0] // 2), max(1, size[1] // 2)))
        yield f"{size[0]}x{size[1]}", encoded(sliver, "PNG")
    yield "1-bit PNG", encoded(digit.convert("1"), "PNG")
    yield "1-bit BMP", encoded(digit.convert("1"), "BMP")
    yield "16-bit gray PNG", encoded(Image.fromarray(np.asarray(digit).astype(np.uint16) * 257), "PNG")
    yield "16-bit RGBA PNG", png(48, 48, color=6, bits=16)
    yield "LA PNG", encoded(digit.convert("LA"), "PNG")
    yield "palette with transparency", encoded(digit.convert("P"), "PNG", transparency=0)
    yield "gray with transparency", encoded(digit, "PNG", transparency=0)
    yield "RGB with transparency", encoded(digit.convert("RGB"), "PNG", transparency=(0, 0, 0))
    yield "RGBA all transparent", encoded(Image.new("RGBA", (48, 48)), "PNG")
    yield "CMYK JPEG", encoded(digit.convert("CMYK"), "JPEG")
    yield "gray JPEG", encoded(digit, "JPEG")
    yield "progressive JPEG", encoded(digit.convert("RGB"), "JPEG", progressive=True)
    yield "GIF with transparency", encoded(digit.convert("P"), "GIF", transparency=0)
    yield "RGBA BMP", encoded(digit.convert("RGBA"), "BMP")
    yield "RGBA WebP", encoded(digit.convert("RGBA"), "WEBP")
    yield "animated WebP", animation("WEBP")
    yield "large JPEG (decoded at 1/4)", encoded(seven(2100, "RGB"), "JPEG")
    pictures = seven(1200, "RGB"), seven(1200, "RGB").transpose(Image.Transpose.ROTATE_90)
    yield "MPO (two pictures)", encoded(pictures[0], "MPO", save_all=True, append_images=[pictures[1]])


ODD_IMAGES = list(odd_images())


@pytest.mark.parametrize(("label", "content"), ODD_IMAGES, ids=[label for label, _ in ODD_IMAGES])
def test_odd_images_are_prepared_or_called_blank(label: str, content: bytes) -> None:
    try:
        frame = prepare_digit(read_image_bytes(content, "upload"), "upload")
    except ImageInputError as error:
        assert str(error) == "upload: the image is blank (no ink found); draw or photograph a digit"
        return
    assert frame.shape == (28, 28) and frame.dtype == np.float32
    assert frame.min() >= 0.0 and frame.max() <= 1.0 and frame.sum() > 1.0  # A sliver's stroke is faint.


def fuzz_seeds() -> dict[str, bytes]:
    """Small real files to mutate: each format and mode read, and the formats refused."""
    digit = seven(24)
    return {
        "png": encoded(digit, "PNG"),
        "png-rgba": encoded(digit.convert("RGBA"), "PNG"),
        "png-palette": encoded(digit.convert("P"), "PNG", transparency=0),
        "png-16": encoded(Image.fromarray(np.asarray(digit).astype(np.uint16) * 257), "PNG"),
        "apng": animation("PNG"),
        "jpeg": encoded(digit.convert("RGB"), "JPEG"),
        "jpeg-progressive": encoded(digit.convert("RGB"), "JPEG", progressive=True),
        "jpeg-cmyk": encoded(digit.convert("CMYK"), "JPEG"),
        "gif": animation("GIF"),
        "bmp": encoded(digit, "BMP"),
        "bmp-rgba": encoded(digit.convert("RGBA"), "BMP"),
        "bmp-rle": rle8_bmp(24, 24, rle8_rows(digit)),
        "webp": encoded(digit.convert("RGB"), "WEBP"),
        "webp-lossless": encoded(digit.convert("RGBA"), "WEBP", lossless=True),
        "tiff": encoded(digit, "TIFF"),
        "psd": psd(24, 24),
        "spider": encoded(digit.convert("F"), "SPIDER"),
        "eps": encoded(digit, "EPS"),
    }


SEEDS = fuzz_seeds()
FUZZ = settings(
    max_examples=1500,  # About 5 s here (read and prepared), and 600 for the server, about 4 s.
    deadline=None,  # The time is checked in the test (EXAMPLE_S), for every example.
    derandomize=True,  # The same examples on every run: CI is deterministic.
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    """A seed with a few bytes set, flipped, inserted or deleted, or cut short; a PNG's checksums
    made right again half the time (else nearly every mutation stops at Pillow's CRC check)."""
    content = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for kind, where, value in draw(
        st.lists(
            st.tuples(
                st.sampled_from(["set", "flip", "insert", "delete", "truncate", "number"]),
                st.integers(0, 2**16),
                st.binary(min_size=1, max_size=8),
            ),
            min_size=1,
            max_size=4,
        )
    ):
        at = where % (len(content) + 1)
        if kind == "set":
            content[at : at + len(value)] = value
        elif kind == "flip" and at < len(content):
            content[at] ^= 1 << (value[0] % 8)
        elif kind == "insert":
            content[at:at] = value
        elif kind == "delete":
            del content[at : at + value[0] % 32 + 1]
        elif kind == "truncate":
            del content[at:]
        elif kind == "number":  # A width, height, length or count: a large value in either byte order.
            number = int.from_bytes(value.ljust(4, b"\x00")[:4], "big")
            content[at : at + 4] = number.to_bytes(4, "big" if value[-1] % 2 else "little")
    return with_fixed_crcs(bytes(content)) if draw(st.booleans()) else bytes(content)


@FUZZ
@given(mutated_files())
def test_mutated_files_are_read_or_refused_in_one_sentence(content: bytes) -> None:
    """The CLI's way in (predict/files.py): read_image_bytes, then prepare_digit."""
    start = time.perf_counter()
    try:
        frame = prepare_digit(read_image_bytes(content, "upload"), "upload")
    except ImageInputError as error:
        assert_one_sentence(str(error))
    else:
        assert frame.shape == (28, 28) and frame.dtype == np.float32 and 0.0 <= frame.min() <= frame.max() <= 1.0
    assert time.perf_counter() - start < EXAMPLE_S


@pytest.fixture(scope="module")
def client(smoke_run: Path) -> Iterator[Any]:
    from fastapi.testclient import TestClient

    from mnist_cnn.serve.app import create_app

    with TestClient(create_app(smoke_run)) as http:
        yield http


def assert_answered(response: Any) -> None:
    """200 with every model's answer, or a 4xx whose body is one sentence, as every error here."""
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text
    body = response.json()
    if response.status_code == 200:
        assert set(body["predictions"]) == {"Model_A", "Model_B"}
    else:
        assert list(body) == ["detail"] and isinstance(body["detail"], str)
        assert "\n" not in body["detail"] and "Error" not in body["detail"], body


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (encoded(seven(), "EPS"), "upload: PostScript (EPS) images are not read"),
        (psd(), "upload: Photoshop (PSD) images are not read"),
        (encoded(seven(mode="F"), "SPIDER"), "upload: not a readable image"),
        (encoded(seven(), "TIFF"), "upload: TIFF images are not read"),
        (png(19_999_999, 1), "upload: 19999999x1 is over the limit of 10,000 pixels a side"),
        (jpeg_with_scans(MAX_JPEG_SCANS), "upload: the JPEG has 106 scans"),
    ],
    ids=["eps", "psd", "spider", "tiff", "line", "jpeg-scans"],
)
def test_the_server_answers_hostile_uploads_422_in_one_sentence(client: Any, content: bytes, expected: str) -> None:
    response = client.post("/api/predict", content=content)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(expected)


@settings(FUZZ, max_examples=600)
@given(mutated_files())
def test_the_server_answers_mutated_uploads_without_a_5xx(client: Any, content: bytes) -> None:
    """The server's way in (prepare_upload, in a preparing thread): never a 500 or a 504."""
    start = time.perf_counter()
    assert_answered(client.post("/api/predict", content=content))
    assert time.perf_counter() - start < EXAMPLE_S
