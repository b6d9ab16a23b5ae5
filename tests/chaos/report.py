"""The chaos run's figures as one plain-text table (a column per seed and the total), then the violations found."""

from __future__ import annotations

from collections import Counter

from tests.chaos.checks import KINDS
from tests.chaos.driver import KINDS as SALE_KINDS
from tests.chaos.proxy import FAULTS
from tests.chaos.run import SeedResult

DETAILS_PER_KIND = 8
# Requests whose faults are counted apart, by route as the proxy names them.
ROUTES = (
    ("charges (POST /v1/payments)", lambda route: route == "POST /v1/payments"),
    ("refunds", lambda route: route.startswith("POST /v1/payments/") and route.endswith("/refunds")),
    ("pushes of the journal", lambda route: route == "POST /v1/transactions:batch"),
)


def _sum(values: list) -> object:
    numbers = [v for v in values if isinstance(v, (int, float))]
    return sum(numbers) if len(numbers) == len(values) else "-"


def table(results: list[SeedResult]) -> str:
    rows: list[tuple[str, list]] = []

    def row(label: str, values: list, total: object | None = None) -> None:
        rows.append((label, [*values, _sum(values) if total is None else total]))

    sales = [sum(sum(c.values()) for c in r.sales.values()) for r in results]
    told = [sum(c["told_paid"] for c in r.sales.values()) for r in results]
    row("sales", sales)
    for kind in [*SALE_KINDS, "restored"]:
        if kind.startswith("refund"):
            continue
        counts = [r.sales.get(kind, Counter()) for r in results]
        if kind == "restored" and not any(counts):
            continue
        row(
            f"  {kind} (told paid / all)",
            [f"{c['told_paid']}/{sum(c.values())}" for c in counts],
            f"{sum(c['told_paid'] for c in counts)}/{sum(sum(c.values()) for c in counts)}",
        )
    row("told paid", told)
    payers = [r.findings.figures.get("payer_identified", (0, 0)) for r in results]
    row(
        "  pay-as-member with the payer's member on the sale",
        [f"{a}/{b}" for a, b in payers],
        f"{sum(a for a, _ in payers)}/{sum(b for _, b in payers)}",
    )
    row("  of which offline (cash)", [r.offline_paid for r in results])
    for outcome, label in (
        ("journaled_untold", "answer lost, found journaled"),
        ("lost", "answer lost, nothing journaled"),
        ("cancelled", "cancelled"),
        ("abandoned", "abandoned (could not end)"),
    ):
        row(label, [sum(c[outcome] for c in r.sales.values()) for r in results])
    row(
        "refunds told done / asked",
        [f"{r.refunds['told_refunded']}/{sum(r.refunds.values())}" for r in results],
        f"{sum(r.refunds['told_refunded'] for r in results)}/{sum(sum(r.refunds.values()) for r in results)}",
    )
    row("  refund answers lost (502 or agent gone)", [r.refund_answers_lost for r in results])
    row("code payments refused as offline", [r.offline_refusals for r in results])
    row("  ... while central was running", [r.offline_refusals_central_up for r in results])
    row("requests with bad values (NaN, 1e999, ...)", [r.bad_inputs for r in results])
    row("requests through the proxy", [r.faults.get("requests", 0) for r in results])
    for fault in FAULTS:
        row(f"fault {fault}", [r.faults.get(fault, 0) for r in results])
        for label, route in ROUTES:
            row(
                f"  on {label}",
                [sum(n for (f, at), n in r.fault_routes.items() if f == fault and route(at)) for r in results],
            )
    row("agent kills (SIGKILL)", [r.agent_kills for r in results])
    row("central stops", [r.central_stops for r in results])
    row("  of which SIGKILL", [r.central_kills for r in results])
    row(
        "time to drain (s)",
        [f"{r.drain_s:.1f}" if r.drain_s is not None else "never" for r in results],
        f"max {max((r.drain_s for r in results if r.drain_s is not None), default=0):.1f}",
    )
    row("  then waited for late repairs (s)", [round(r.late_s) for r in results])
    row(
        "seconds (selling / all)",
        [f"{r.drive_s:.0f}/{r.seconds:.0f}" for r in results],
        f"{sum(r.drive_s for r in results):.0f}/{sum(r.seconds for r in results):.0f}",
    )
    for kind in KINDS:
        row(f"violations: {kind}", [r.findings.count(kind) for r in results])
    row("VIOLATIONS", [len(r.findings.violations) for r in results])

    header = ["", *(f"seed {r.seed}" for r in results), "total"]
    width = max(len(label) for label, _ in rows)
    columns = [
        max(len(str(v)) for v in [header[i + 1], *(values[i] for _, values in rows)]) for i in range(len(header) - 1)
    ]
    lines = ["  ".join([header[0].ljust(width), *(h.rjust(w) for h, w in zip(header[1:], columns, strict=True))])]
    for label, values in rows:
        lines.append("  ".join([label.ljust(width), *(str(v).rjust(w) for v, w in zip(values, columns, strict=True))]))
    return "\n".join(lines)


def details(results: list[SeedResult]) -> str:
    lines = []
    for result in results:
        by_kind: dict[str, list[str]] = {}
        for violation in result.findings.violations:
            by_kind.setdefault(violation.kind, []).append(violation.detail)
        if not by_kind:
            continue
        lines.append(f"seed {result.seed} (logs and databases in {result.folder}):")
        for kind, found in by_kind.items():
            lines.append(f"  {kind}: {len(found)} — {KINDS[kind]}")
            lines.extend(f"    {detail}" for detail in found[:DETAILS_PER_KIND])
            if len(found) > DETAILS_PER_KIND:
                lines.append(f"    ... and {len(found) - DETAILS_PER_KIND} more")
    return "\n".join(lines)
