"""Work in progress on disk: the sale open at each station (`open_sale`) and the refunds with a code part not yet
journaled (`pending_refund`).

Both are written before a step that moves money and removed once the money's fate is journaled, so that after a
crash the till finds them and finishes what was interrupted (docs/storage.md). Bodies are JSON text, written and
read by their users (`agent.sale.Sale`, `agent.refunds.PendingRefund`); this store only keeps them. It is the one
place with SQL on the two tables. Methods named `a…` hop to a worker thread: call those from the event loop. A
method that takes a `connection` works inside the caller's transaction (the journal row that ends the work).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from agent.clock import utcnow
from agent.db import reader
from agent.models import OpenSale, PendingRefund

_open_sale = OpenSale.metadata.tables["open_sale"]
_pending_refund = PendingRefund.metadata.tables["pending_refund"]


def _upsert(table: sa.Table, *replaced: str) -> sa.Insert:
    """Insert a row, or replace these columns (and `updated_at`) of the row with its id."""
    new = sqlite_insert(table)
    return new.on_conflict_do_update(
        index_elements=[table.c.id], set_={name: new.excluded[name] for name in (*replaced, "updated_at")}
    )


# Built once: a sale is saved before every step that moves money.
_SAVE_SALE = _upsert(_open_sale, "state", "body")
_DELETE_SALE = sa.delete(_open_sale).where(_open_sale.c.id == sa.bindparam("sale_id"))
_SAVE_REFUND = _upsert(_pending_refund, "body")


class OpenSaleStore:
    def __init__(self, engine: sa.Engine):
        self.engine = engine

    # --- open sales ---------------------------------------------------------------------------------------------

    def save(
        self,
        sale_id: str,
        station_id: str,
        state: str,
        body: str,
        created_at: datetime,
        connection: sa.Connection | None = None,
    ) -> None:
        """Keep the sale as it is now (its first save inserts it, later ones replace state and body); with
        `connection`, inside the caller's transaction (the answer kept for its request's Idempotency-Key)."""
        if connection is None:
            with self.engine.begin() as own:
                self.save(sale_id, station_id, state, body, created_at, own)
            return
        row = {"station_id": station_id, "state": state, "body": body, "created_at": created_at}
        connection.execute(_SAVE_SALE, {"id": sale_id, **row, "updated_at": utcnow()})

    def delete(self, sale_id: str, connection: sa.Connection | None = None) -> None:
        """The sale is journaled or settled; with `connection`, inside the caller's transaction (the journal row)."""
        if connection is None:
            with self.engine.begin() as own:
                self.delete(sale_id, own)
            return
        connection.execute(_DELETE_SALE, {"sale_id": sale_id})

    def bodies(self, station_id: str) -> list[str]:
        """The station's saved sales as JSON, oldest first (read at start to finish what a stop interrupted)."""
        query = (
            sa.select(_open_sale.c.body).where(_open_sale.c.station_id == station_id).order_by(_open_sale.c.created_at)
        )
        with reader(self.engine) as connection:
            return list(connection.execute(query).scalars())

    def count_open(self, connection: sa.Connection | None = None) -> int:
        """Open sales of every station; with `connection`, in the caller's read."""
        if connection is None:
            with reader(self.engine) as own:
                return self.count_open(own)
        return connection.execute(sa.select(sa.func.count()).select_from(_open_sale)).scalar_one()

    async def asave(self, sale_id: str, station_id: str, state: str, body: str, created_at: datetime) -> None:
        await asyncio.to_thread(self.save, sale_id, station_id, state, body, created_at)

    async def adelete(self, sale_id: str) -> None:
        await asyncio.to_thread(self.delete, sale_id)

    async def abodies(self, station_id: str) -> list[str]:
        return await asyncio.to_thread(self.bodies, station_id)

    # --- refunds in flight -------------------------------------------------------------------------------------

    def save_refund(
        self, refund_id: str, sale_id: str, body: str, created_at: datetime, connection: sa.Connection | None = None
    ) -> None:
        """Keep a refund with a code part as it is now, before a part is sent (one per sale at most); with
        `connection`, inside the caller's transaction."""
        if connection is None:
            with self.engine.begin() as own:
                self.save_refund(refund_id, sale_id, body, created_at, own)
            return
        row = {"id": refund_id, "sale_id": sale_id, "body": body, "created_at": created_at, "updated_at": utcnow()}
        connection.execute(_SAVE_REFUND, row)

    def refund_body(self, sale_id: str) -> str | None:
        """The JSON of the sale's refund in flight, if it has one."""
        with reader(self.engine) as connection:
            return connection.execute(
                sa.select(_pending_refund.c.body).where(_pending_refund.c.sale_id == sale_id)
            ).scalar()

    def refund_sales(self, connection: sa.Connection | None = None) -> list[str]:
        """The sales with a refund in flight, oldest refund first; with `connection`, in the caller's transaction
        (retention keeps those sales)."""
        if connection is None:
            with reader(self.engine) as own:
                return self.refund_sales(own)
        query = sa.select(_pending_refund.c.sale_id).order_by(_pending_refund.c.created_at)
        return list(connection.execute(query).scalars())

    def drop_refund(self, refund_id: str, connection: sa.Connection | None = None) -> None:
        """The refund is journaled, or nothing of it was refunded; with `connection`, inside the caller's
        transaction (the refund's journal row)."""
        if connection is None:
            with self.engine.begin() as own:
                self.drop_refund(refund_id, own)
            return
        connection.execute(sa.delete(_pending_refund).where(_pending_refund.c.id == refund_id))

    def count_refunds(self, connection: sa.Connection | None = None) -> int:
        """Refunds in flight; with `connection`, in the caller's read."""
        if connection is None:
            with reader(self.engine) as own:
                return self.count_refunds(own)
        return connection.execute(sa.select(sa.func.count()).select_from(_pending_refund)).scalar_one()

    async def asave_refund(self, refund_id: str, sale_id: str, body: str, created_at: datetime) -> None:
        await asyncio.to_thread(self.save_refund, refund_id, sale_id, body, created_at)

    async def arefund_body(self, sale_id: str) -> str | None:
        return await asyncio.to_thread(self.refund_body, sale_id)

    async def arefund_sales(self) -> list[str]:
        return await asyncio.to_thread(self.refund_sales)

    async def adrop_refund(self, refund_id: str) -> None:
        await asyncio.to_thread(self.drop_refund, refund_id)
