"""The print queue against a real network printer on 127.0.0.1: a receipt prints once, whatever the printer does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from agent.db import open_database
from agent.print_queue import JobStateError, PrinterState, PrintQueue
from drivers.base import Backoff
from drivers.escpos_printer import NetworkConnection, print_job
from drivers.urls import parse_device_url
from tests.printer_server import PrinterServer

RECEIPT = b"\x1b@" + "小票 receipt\n".encode("gb18030") * 20 + b"\x1dVA\x00"
FAST_RETRY = Backoff(first=0.05, cap=0.2)


def make_queue(engine, server: PrinterServer, states: list | None = None, backoff: Backoff = FAST_RETRY) -> PrintQueue:
    connection = NetworkConnection(parse_device_url(server.url), write_timeout=2, status_timeout=0.5, connect_timeout=1)
    on_status = (lambda status: states.append(status.state)) if states is not None else None
    return PrintQueue(engine, "printer", lambda job_id, data: print_job(connection, data), on_status, backoff=backoff)


@pytest.fixture
def queue(engine, printer_server):
    queue = make_queue(engine, printer_server)
    queue.start()
    yield queue
    queue.stop()


def test_a_receipt_prints_once_even_when_enqueued_twice(queue, printer_server):
    queue.enqueue("sale-1:receipt", RECEIPT)
    queue.enqueue("sale-1:receipt", RECEIPT)  # the till retried after a timeout
    assert queue.wait_for("sale-1:receipt", {"printed"}, timeout=5).status == "printed"
    queue.enqueue("sale-2:receipt", RECEIPT)
    queue.wait_for("sale-2:receipt", {"printed"}, timeout=5)
    assert printer_server.wait_for_jobs(2) == [RECEIPT, RECEIPT]
    assert [job.id for job in queue.jobs("printed")] == ["sale-2:receipt", "sale-1:receipt"]


def test_printer_off_holds_the_queue_and_it_resumes_when_back(engine, printer_server):
    states: list[PrinterState] = []
    printer_server.refuse()
    queue = make_queue(engine, printer_server, states, backoff=Backoff(first=1.0, cap=1.0))
    queue.start()
    try:
        queue.enqueue("sale-1:receipt", RECEIPT)
        queue.enqueue("sale-2:receipt", RECEIPT)
        held = queue.wait_for_state({PrinterState.OFFLINE}, timeout=5)
        assert held.state is PrinterState.OFFLINE and "refused" in held.reason
        assert {queue.job(j).status for j in ("sale-1:receipt", "sale-2:receipt")} <= {"queued", "sending"}
        printer_server.switch_on()
        for job_id in ("sale-1:receipt", "sale-2:receipt"):
            assert queue.wait_for(job_id, {"printed"}, timeout=10).status == "printed"
        assert printer_server.wait_for_jobs(2) == [RECEIPT, RECEIPT]
        assert queue.status.state is PrinterState.READY and PrinterState.OFFLINE in states
    finally:
        queue.stop()


def test_paper_out_holds_without_sending_and_resumes_when_loaded(engine, printer_server):
    printer_server.paper = "out"
    queue = make_queue(engine, printer_server)
    queue.start()
    try:
        queue.enqueue("sale-1:receipt", RECEIPT)
        held = queue.wait_for_state({PrinterState.PAPER_OUT}, timeout=5)
        assert held.state is PrinterState.PAPER_OUT and "out of paper" in held.reason
        assert printer_server.jobs == []  # nothing was sent while the paper was out
        printer_server.paper = "ok"
        assert queue.wait_for("sale-1:receipt", {"printed"}, timeout=10).status == "printed"
        assert printer_server.wait_for_jobs(1) == [RECEIPT]
    finally:
        queue.stop()


def test_printer_dying_mid_job_gives_exactly_one_complete_copy(queue, printer_server):
    printer_server.drop_after = len(RECEIPT) // 2
    queue.enqueue("sale-1:receipt", RECEIPT)
    job = queue.wait_for("sale-1:receipt", {"printed"}, timeout=10)
    assert job.status == "printed" and job.attempts == 2
    assert printer_server.wait_for_jobs(1) == [RECEIPT]
    partial = [c for c in printer_server.connections if c.data and not c.complete]
    assert len(partial) == 1 and len(partial[0].data) < len(RECEIPT)


def test_cancel_and_the_states_a_person_may_change(engine, printer_server):
    printer_server.refuse()
    queue = make_queue(engine, printer_server, backoff=Backoff(first=60, cap=60))  # holds long after one failure
    queue.start()
    try:
        queue.enqueue("sale-1:receipt", RECEIPT)
        assert queue.wait_for_state({PrinterState.OFFLINE}, timeout=5).state is PrinterState.OFFLINE
        assert queue.job("sale-1:receipt").attempts == 1  # tried once, now on hold
        assert queue.cancel("sale-1:receipt").status == "cancelled"
        with pytest.raises(JobStateError, match="only a job that is uncertain"):
            queue.release("sale-1:receipt")
    finally:
        queue.stop()


WRITER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from agent.db import open_database
    from agent.print_queue import PrintQueue
    from drivers.escpos_printer import NetworkConnection, print_job
    from drivers.urls import parse_device_url

    connection = NetworkConnection(parse_device_url(sys.argv[2]), write_timeout=60, status_timeout=0.5)
    queue = PrintQueue(open_database(Path(sys.argv[1])), "printer", lambda job_id, data: print_job(connection, data))
    queue.start()
    queue.enqueue("sale-1:receipt", bytes(4_000_000))
    queue.wait_for("sale-1:receipt", {"sending"}, timeout=10)
    print("sending", flush=True)
    queue.wait_for("sale-1:receipt", {"printed"}, timeout=60)
    """
)


def test_kill_9_while_sending_holds_the_job_for_a_person(db_path):
    open_database(db_path).dispose()
    with PrinterServer(receive_buffer=4096) as jammed:
        jammed.stalled = True  # takes the connection, reads nothing: the agent is stuck mid-job
        agent = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db_path), jammed.url], stdout=subprocess.PIPE, text=True
        )
        assert agent.stdout.readline().strip() == "sending"
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait()

    with PrinterServer() as printer:
        engine = open_database(db_path)
        queue = make_queue(engine, printer)
        queue.start()
        try:
            job = queue.job("sale-1:receipt")
            assert job.status == "uncertain" and "reprint or mark printed" in job.last_error
            assert queue.status.uncertain == 1
            queue.release("sale-1:receipt")  # a person checked: it did not print
            assert queue.wait_for("sale-1:receipt", {"printed"}, timeout=10).status == "printed"
            assert len(printer.wait_for_jobs(1)) == 1
        finally:
            queue.stop()
            engine.dispose()
