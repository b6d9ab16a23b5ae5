"""ESC/POS: a receipt rendered to bytes reads back as the customer would see it, and print jobs survive real
printer trouble (paper out, silence, power loss mid-job, a jam) over a real TCP connection on 127.0.0.1."""

from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import replace
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import zxingcpp
from PIL import Image

from agent import receipts
from agent.receipts import display_width, layout
from drivers.base import DeviceTimeout, DeviceUnavailable, PaperOut
from drivers.document import Document, Text
from drivers.escpos_decode import (
    BarcodeElement,
    Cut,
    QrCode,
    RasterImage,
    TextLine,
    decode,
    decode_code128,
    render_preview,
)
from drivers.escpos_printer import (
    UNKNOWN,
    FileConnection,
    PrinterProfile,
    PrinterStatus,
    SerialConnection,
    code128_escpos,
    encode_text,
    print_job,
    render,
)
from drivers.urls import PRINTERS, driver_class, parse_device_url
from tests.agent.test_receipts import TRANSACTION_ID, sale_receipt
from tests.printer_server import PrinterServer

SHANGHAI = ZoneInfo("Asia/Shanghai")
URL = f"https://r.example.com/e/{TRANSACTION_ID}"
SHORT_ID = "20240312000123"  # a numeric receipt number: fits a real Code 128 on both papers
FAST = {"status_timeout": 0.3, "write_timeout": 1.0, "connect_timeout": 1.0}


def sale_document(columns: int = 48, **changes: object) -> Document:
    return layout(sale_receipt(**changes), columns, SHANGHAI, open_drawer=True)


def profile(columns: int = 48, **fields: object) -> PrinterProfile:
    return PrinterProfile(dots_per_line=384 if columns == 32 else 576, **fields)  # type: ignore[arg-type]


def decoded_text(elements) -> list[str]:
    return [e.text for e in elements if isinstance(e, TextLine)]


def has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def connection(url: str, **options: float):
    device_url = parse_device_url(url)
    return driver_class(PRINTERS, device_url).from_url(device_url, **{**FAST, **options})


# --- rendering and decoding --------------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", [32, 48])
def test_chinese_receipt_round_trips_through_chinese_mode(columns):
    document = sale_document(columns)
    data = render(document, profile(columns))
    assert b"\x1c&" in data and b"\x1c." in data  # GB18030 inside FS & ... FS .
    lines = decoded_text(decode(data))
    expected = [block.text for block in document.blocks if isinstance(block, Text)]
    assert [line for line in lines if line in expected] == expected  # every line, in order, unchanged
    assert not any("?" in line or "？" in line for line in lines if has_cjk(line))


def test_fullwidth_punctuation_survives_instead_of_turning_into_question_marks():
    lines = decoded_text(decode(render(receipts.test_page("好邻居便利店", 48), profile())))
    assert "中文：你好，世界。价格￥12.34（含税）" in lines


@pytest.mark.parametrize("columns", [32, 48])
def test_printed_columns_match_the_layout(columns):
    # What the printer spends (1 column per single byte, 2 per double-byte character) is what the layout counted,
    # so amounts really end at the paper's last column: ¥ goes out as one byte of code page 437.
    elements = decode(render(sale_document(columns), profile(columns)))
    for line in (e for e in elements if isinstance(e, TextLine)):
        assert line.cells == display_width(line.text), line.text
    assert any(
        line.cells == columns and line.text.endswith("¥46.45") for line in elements if isinstance(line, TextLine)
    )


def test_the_qr_code_carries_the_e_receipt_url():
    qrs = [e for e in decode(render(sale_document(), profile())) if isinstance(e, QrCode)]
    assert qrs[0].payload == URL


@pytest.mark.parametrize("columns", [32, 48])
def test_a_receipt_number_prints_as_a_code128_barcode(columns):
    document = sale_document(columns, transaction_id=SHORT_ID, e_receipt_url=None)
    barcodes = [e for e in decode(render(document, profile(columns))) if isinstance(e, BarcodeElement)]
    assert [(b.data, b.symbology, b.hri) for b in barcodes] == [(SHORT_ID, "CODE128", True)]
    assert barcodes[0].width >= 2


@pytest.mark.parametrize("columns", [32, 48])
def test_an_id_too_long_for_a_code128_on_the_paper_prints_as_a_qr_code_of_the_same_text(columns):
    elements = decode(render(sale_document(columns), profile(columns)))
    assert [e.payload for e in elements if isinstance(e, QrCode)] == [URL, TRANSACTION_ID]
    assert not any(isinstance(e, BarcodeElement) for e in elements)


@pytest.mark.parametrize("data", ["A1", "12345", "ORDER-20240312-000123", "x{y", "20240312000123"])
def test_code128_code_sets_read_back_to_the_same_text(data):
    content, modules = code128_escpos(data)
    assert decode_code128(content.encode("latin-1")) == data
    if data.isdigit() and len(data) % 2 == 0:
        assert modules == 11 * (len(data) // 2 + 2) + 13 + 20  # digit pairs packed in set C


def test_the_cut_is_last_and_the_drawer_kick_first():
    elements = decode(render(sale_document(), profile()))
    assert isinstance(elements[-1], Cut)
    assert type(elements[0]).__name__ == "DrawerKick"


def test_store_name_prints_double_size_and_centred():
    elements = decode(render(sale_document(), profile()))
    first = next(e for e in elements if isinstance(e, TextLine))
    assert (first.text, first.align, first.double, first.bold) == ("好邻居便利店（中关村店）", "center", True, True)


def test_gbk_profile_round_trips_chinese():
    data = render(sale_document(), profile(text_encoding="gbk"))
    lines = decoded_text(decode(data, codec="gbk"))
    assert "谢谢惠顾，欢迎再来。" in lines
    assert any(line.startswith("农夫山泉饮用天然水550ml") for line in lines)


def test_big5_profile_prints_traditional_chinese():
    document = layout(
        sale_receipt(store=replace(sale_receipt().store, name="台北忠孝門市"), footer=("謝謝惠顧，歡迎再來。",)),
        48,
        SHANGHAI,
    )
    data = render(document, profile(text_encoding="big5"))
    lines = decoded_text(decode(data, codec="big5"))
    assert "台北忠孝門市" in lines and "謝謝惠顧，歡迎再來。" in lines
    # A simplified character Big5 does not have prints as a visible ？, and nothing crashes.
    assert encode_text("邻居", "big5") == b"\x1c&" + "？居".encode("big5") + b"\x1c."


def test_unprintable_characters_become_visible_replacements():
    assert encode_text("苹果🍎", "gb18030") == b"\x1c&" + "苹果？".encode("gb18030") + b"\x1c."
    assert encode_text("a\tb", "gb18030") == b"a?b"  # a control character would be a printer command
    assert encode_text("¥5", "gbk") == b"\x9d5"  # narrow yen from code page 437, outside Chinese mode


def test_raster_profile_prints_text_as_images_without_chinese_mode():
    data = render(sale_document(32), profile(32, text_encoding="raster"))
    assert b"\x1c&" not in data
    elements = decode(data)
    images = [e for e in elements if isinstance(e, RasterImage)]
    assert images and all(image.image.width == 384 for image in images)
    assert not any(has_cjk(line) for line in decoded_text(elements))
    assert next(e.payload for e in elements if isinstance(e, QrCode)) == URL  # codes stay native


def test_double_size_text_is_bigger_in_raster_mode():
    def height(double: bool) -> int:
        document = Document((Text("好邻居", "center", double=double),), 48)
        image = next(e for e in decode(render(document, profile(text_encoding="raster"))) if isinstance(e, RasterImage))
        inked = image.image.convert("L").point(lambda v: 255 - v).getbbox()
        assert inked is not None
        return inked[3] - inked[1]

    assert height(True) >= 1.8 * height(False)


def test_without_native_qr_the_code_is_an_image_that_scans_to_the_url():
    document = sale_document(e_receipt_url=URL, transaction_id=SHORT_ID)
    data = render(document, profile(native_qr=False))
    assert b"\x1d(k" not in data  # no GS ( k
    images = [e.image for e in decode(data) if isinstance(e, RasterImage)]
    scanned = [result.text for image in images for result in zxingcpp.read_barcodes(image.convert("L"))]
    assert URL in scanned


def test_decoder_refuses_commands_it_does_not_know_and_names_the_offset():
    with pytest.raises(ValueError, match="byte 2"):
        decode(b"\x1b@\x1bZ\x00")
    with pytest.raises(ValueError, match="cut short"):
        decode(b"\x1dv0\x00\x10\x00\x10\x00")


def test_preview_is_a_receipt_sized_png_whose_codes_scan(tmp_path: Path):
    document = sale_document(transaction_id=SHORT_ID, e_receipt_url=URL)
    path = render_preview(decode(render(document, profile())), tmp_path / "receipt.png", 576)
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert 576 <= image.width <= 700
        assert 1200 <= image.height <= 4000
        assert image.convert("L").getextrema() == (0, 255)  # ink on paper
        assert {result.text for result in zxingcpp.read_barcodes(image.convert("L"))} == {URL, SHORT_ID}


# --- printing over TCP -------------------------------------------------------------------------------------------


def test_print_job_delivers_exactly_the_rendered_bytes(printer_server: PrinterServer):
    data = render(sale_document(), profile())
    status = print_job(connection(printer_server.url), data)
    assert status == PrinterStatus(online=True, paper="ok")
    assert printer_server.wait_for_jobs(1) == [data]
    assert printer_server.connections[0].queries == [1, 4]


def test_paper_out_is_reported_before_anything_is_sent(printer_server: PrinterServer):
    printer_server.paper = "out"
    with pytest.raises(PaperOut, match=printer_server.url):
        print_job(connection(printer_server.url), render(sale_document(), profile()))
    [seen] = printer_server.wait_for_connections(1)
    assert seen.queries == [1, 4] and bytes(seen.data) == b""


def test_low_paper_still_prints_and_is_reported(printer_server: PrinterServer):
    printer_server.paper = "low"
    status = print_job(connection(printer_server.url), b"\x1b@hello\n")
    assert status.paper == "low"
    assert printer_server.wait_for_jobs(1) == [b"\x1b@hello\n"]


def test_a_silent_printer_has_unknown_status_and_the_job_still_prints(printer_server: PrinterServer):
    printer_server.silent = True
    conn = connection(printer_server.url, status_timeout=0.2)
    with conn:
        assert conn.status() == UNKNOWN  # no answer is not "fine"
    data = render(sale_document(), profile())
    assert print_job(conn, data) == UNKNOWN
    assert printer_server.wait_for_jobs(1) == [data]


def test_a_printer_that_is_off_is_unavailable_and_named(printer_server: PrinterServer):
    printer_server.refuse()
    with pytest.raises(DeviceUnavailable, match=f"{printer_server.url}.*refused"):
        print_job(connection(printer_server.url), b"\x1b@hello\n")


def test_a_printer_dying_mid_job_gets_the_whole_job_again_exactly_once():
    data = render(sale_document(32), profile(32, text_encoding="raster"))  # tens of KB of images
    assert len(data) > 30_000
    with PrinterServer(receive_buffer=4096) as server:
        server.drop_after = 5000
        with pytest.raises(DeviceUnavailable, match="the whole receipt is sent again"):
            print_job(connection(server.url), data)
        assert server.jobs == []  # the partial job is not a copy
        print_job(connection(server.url), data)  # the print queue's resend
        assert server.wait_for_jobs(1) == [data]
        server.wait_for_connections(2)
        assert len(server.jobs) == 1


def test_a_jammed_printer_times_out_instead_of_hanging():
    data = render(sale_document(32), profile(32, text_encoding="raster"))
    with PrinterServer(receive_buffer=4096) as server:
        server.stalled = True
        started = time.monotonic()
        with pytest.raises(DeviceTimeout, match="took no data"):
            print_job(connection(server.url, write_timeout=0.5, status_timeout=0.1), data)
        assert time.monotonic() - started < 3.0


# --- other transports --------------------------------------------------------------------------------------------


def test_file_connection_appends_the_job_to_the_device_file(tmp_path: Path):
    device = tmp_path / "lp0"
    device.write_bytes(b"")
    conn = connection(f"file://{device}")
    assert isinstance(conn, FileConnection)
    assert print_job(conn, b"\x1b@one\n") == UNKNOWN  # write-only: status unknown
    print_job(conn, b"\x1b@two\n")
    assert device.read_bytes() == b"\x1b@one\n\x1b@two\n"


def test_file_connection_to_a_missing_device_is_unavailable(tmp_path: Path):
    with pytest.raises(DeviceUnavailable, match="does not exist"):
        print_job(connection(f"file://{tmp_path}/lp9"), b"x")


def test_file_connection_times_out_when_the_device_takes_no_data(tmp_path: Path):
    fifo = tmp_path / "lp0"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # there, but never reads: the pipe fills up
    try:
        started = time.monotonic()
        with pytest.raises(DeviceTimeout):
            print_job(connection(f"file://{fifo}", write_timeout=0.3), b"x" * 1_000_000)
        assert time.monotonic() - started < 2.0
    finally:
        os.close(reader)


def test_serial_connection_prints_and_reads_status_over_a_pseudo_terminal():
    master, slave = os.openpty()
    data = render(sale_document(), profile())
    received = bytearray()
    done = threading.Event()
    all_there = threading.Event()

    def printer() -> None:  # answers DLE EOT like a printer and keeps everything else
        while not done.is_set():
            if select.select([master], [], [], 0.05)[0]:
                chunk = os.read(master, 65536)
                while chunk.startswith(b"\x10\x04"):
                    os.write(master, b"\x12")
                    chunk = chunk[3:]
                received.extend(chunk)
                if len(received) >= len(data):
                    all_there.set()

    thread = threading.Thread(target=printer, daemon=True)
    thread.start()
    try:
        conn = connection(f"serial://{os.ttyname(slave)}?baudrate=115200")
        assert isinstance(conn, SerialConnection)
        assert print_job(conn, data) == PrinterStatus(online=True, paper="ok")
        assert all_there.wait(5)
        assert bytes(received) == data
    finally:
        done.set()
        thread.join(2)
        os.close(master)
        os.close(slave)


def test_a_printer_without_hardware_codes_gets_both_codes_as_images_that_scan():
    # ZJ-5870: a common 58 mm model whose profile has neither GS ( k QR codes nor GS k Code 128.
    document = sale_document(32, transaction_id=SHORT_ID, e_receipt_url=URL)
    data = render(document, profile(32, escpos_profile="ZJ-5870"))
    elements = decode(data, escpos_profile="ZJ-5870")
    assert not any(isinstance(e, (QrCode, BarcodeElement)) for e in elements)
    scanned = {
        result.text
        for image in (e.image for e in elements if isinstance(e, RasterImage))
        for result in zxingcpp.read_barcodes(image.convert("L"))
    }
    assert {URL, SHORT_ID} <= scanned
    assert "谢谢惠顾，欢迎再来。" in decoded_text(elements)
