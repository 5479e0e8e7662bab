"""`handover bench geo`: the pure parts (how each querying client's answers are judged, the
outage and the loss window, the median and spread of each figure over a row's rounds, the
checks and the lines printed, the command's options), and one planned round and a paced
resolver flood on a bench geo lab.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import pytest

from infra.bench.geo_figures import (
    ROWS,
    FloodRound,
    GeoBench,
    KilledRound,
    MasterDownRound,
    PlannedRound,
    RoundKind,
    Row,
    RowName,
    Spread,
    count_flips,
    first_after,
    judge,
    longest_gap,
    outside_window,
    spread_of,
    summary_lines,
)

OLD, NEW = "127.0.251.11", "127.0.251.21"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("answers", "once", "back"),
    [
        ([OLD, OLD, OLD, NEW, NEW], True, False),
        ([OLD, NEW], True, False),
        ([OLD, NEW, OLD, NEW], False, True),  # flipped back, then forward again
        ([OLD, OLD], False, False),  # never flipped
        ([NEW, NEW], False, False),  # began after the switch: no flip seen
        ([OLD, "SERVFAIL", NEW], False, False),  # an error answer is an answer of its own
        ([OLD, NEW, "SERVFAIL"], False, True),
        ([], False, False),
    ],
)
def test_a_clients_answers_flip_once_only_from_the_old_address_to_the_new(
    answers: list[str], once: bool, back: bool
) -> None:
    f = count_flips(answers, OLD, NEW)
    assert (f.flipped_once, f.flipped_back) == (once, back), f
    assert all(a != b for a, b in zip(f.sequence, f.sequence[1:], strict=False))


@pytest.mark.unit
def test_the_outage_is_the_longest_span_between_acknowledged_writes() -> None:
    assert longest_gap([10.0, 10.05, 10.1, 12.6, 12.65]) == 2.5
    assert longest_gap([3.0, 1.0, 2.0]) == 1.0  # in time order, whatever the input order
    assert longest_gap([5.0]) == 0.0 and longest_gap([]) == 0.0
    assert first_after([1.0, 4.5, 7.0], 4.0) == 0.5
    assert first_after([1.0], 4.0) is None


@pytest.mark.unit
def test_a_lost_write_counts_against_the_window_only_when_the_lost_site_took_it_in_it() -> None:
    start, killed = 100.0, 110.0
    inside = [("site-a", 100.5), ("site-a", 109.9), ("site-a", 99.2)]  # 99.2: the slack
    assert outside_window(inside, "site-a", start, killed) == 0
    outside = [("site-a", 98.0), ("site-b", 105.0), (None, 105.0), ("site-a", 112.0)]
    assert outside_window(outside, "site-a", start, killed) == 4


@pytest.mark.unit
def test_the_spread_of_a_figure_leaves_out_missing_values() -> None:
    assert spread_of([3.0, 1.0, None, 2.0]) == Spread(median=2.0, min=1.0, max=3.0)
    assert spread_of([1.0, 2.0]).median == 1.5
    assert spread_of([None]) == Spread()


def planned(outage: float, lost: int = 0, fenced: int = 0) -> PlannedRound:
    return PlannedRound(
        direction="site-a -> site-b",
        flow_s=6.0 + outage,
        outage_s=outage,
        acknowledged=100,
        lost=lost,
        fenced_accepts=fenced,
    )


def row(name: RowName, rounds: Sequence[RoundKind], asked: int | None = None) -> Row:
    r = Row(
        row=name,
        title=name,
        ttl_s=60 if name == "killed-ttl60" else 5,
        rounds_asked=len(rounds) if asked is None else asked,
        rounds_default=3,
    )
    r.rounds = list(rounds)
    return judge(r)


@pytest.mark.unit
def test_a_row_has_each_figures_median_and_spread_and_passes_its_checks() -> None:
    r = row("planned", [planned(0.5), planned(1.5), planned(0.9)])
    assert r.ok and r.checks == {
        "writes lost 0": True,
        "writes accepted by a fenced side 0": True,
    }
    assert r.figures["outage_s"] == Spread(median=0.9, min=0.5, max=1.5)
    assert list(r.figures) == list(PlannedRound.FIGURES)  # every figure, in the print order


@pytest.mark.unit
def test_a_row_with_a_lost_write_a_fenced_accept_or_missing_rounds_is_not_ok() -> None:
    assert not row("planned", [planned(0.5), planned(0.6, lost=1)]).ok
    fenced = row("planned", [planned(0.5, fenced=1)])
    assert not fenced.ok and not fenced.checks["writes accepted by a fenced side 0"]
    assert not row("planned", [planned(0.5)], asked=3).ok  # a round is missing
    stopped = Row(row="planned", title="p", ttl_s=5, rounds_asked=0, rounds_default=3)
    stopped.error = "round 1: the failover did not complete"
    assert not judge(stopped).ok


def killed(lost: int, outside: int) -> KilledRound:
    return KilledRound(
        direction="site-a -> site-b",
        flow_s=5.0,
        promoted_s=0.6,
        serving_s=None,
        clients_back_s=2.4,
        outage_s=2.5,
        lag_s=1.0,
        lag_transactions=3,
        reading_age_s=1.1,
        acknowledged=80,
        lost=lost,
        lost_outside_window=outside,
        fenced_accepts=0,
    )


@pytest.mark.unit
def test_a_killed_site_may_lose_the_writes_its_window_covers_and_no_other() -> None:
    r = row("killed-ttl5", [killed(lost=3, outside=0), killed(lost=5, outside=0)])
    assert r.ok and r.figures["lost"] == Spread(median=4.0, min=3.0, max=5.0)
    assert r.figures["serving_s"] == Spread()  # no round measured it
    assert not row("killed-ttl60", [killed(lost=1, outside=1)]).ok
    # the link is cut before the kill: a round that lost nothing checked no window
    nothing = row("killed-ttl5", [killed(lost=3, outside=0), killed(lost=0, outside=0)])
    assert not nothing.checks["the writes of the cut link lost (the window checked)"]


def flood(once: int, back: int = 0, lost: int = 0, queries: int = 5000) -> FloodRound:
    return FloodRound(
        direction="site-b -> site-a",
        flow_s=6.2,
        threads=8,
        queries=queries,
        answered=queries - lost,
        lost=lost,
        qps=800.0,
        flipped_once=once,
        flipped_back=back,
    )


@pytest.mark.unit
def test_the_flood_row_needs_every_client_flipped_once_no_query_lost_and_1000_queries() -> None:
    assert row("flood", [flood(8), flood(8)]).ok
    assert not row("flood", [flood(7, back=1)]).checks["answers flipped exactly once"]
    assert not row("flood", [flood(8, lost=1)]).checks["queries lost 0"]
    assert not row("flood", [flood(8, queries=999)]).ok


@pytest.mark.unit
def test_the_master_down_row_needs_the_master_left_behind_repaired() -> None:
    def down(repaired: bool) -> MasterDownRound:
        return MasterDownRound(
            direction="site-a -> site-b",
            flow_s=6.1,
            masters_behind=1,
            repaired=repaired,
            repaired_s=1.7,
            watch_s=1.1,
            outage_s=1.2,
            acknowledged=120,
            lost=0,
            fenced_accepts=0,
        )

    assert row("master-down", [down(True)]).ok
    assert not row("master-down", [down(True), down(False)]).ok


@pytest.mark.unit
def test_the_lines_give_every_figure_as_its_median_and_range_and_the_json_reads_back() -> None:
    rows = [
        row("planned", [planned(0.5), planned(1.5), planned(0.9)]),
        row("flood", [flood(7, back=1)]),
    ]
    lines = summary_lines(rows, 20.0)
    text = "\n".join(lines)
    assert "20/s" in lines[0]
    assert "  planned, TTL 5 s, 3/3 rounds: ok" in text
    assert "outage (longest span without an acknowledged write) s: 0.90 (0.50-1.50)" in text
    assert "writes lost: 0 (0-0)" in text
    assert "queries per second: 800.00 (800.00-800.00)" in text
    assert "flood, TTL 5 s, 1/1 rounds: NOT ok" in text
    assert "checks: FAILED answers flipped exactly once" in text
    bench = GeoBench(write_rate=20.0, rows=rows, ok=False, summary=lines)
    again = GeoBench.model_validate(bench.model_dump(mode="json"))
    assert again == bench and isinstance(again.rows[1].rounds[0], FloodRound)


@pytest.mark.unit
def test_the_command_offers_every_row_and_refuses_zero_rounds() -> None:
    from infra.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["bench", "geo", "--part", "flood", "--part", "planned"])
    assert args.part == ["flood", "planned"] and args.rounds is None
    assert parser.parse_args(["bench", "geo", "--rounds", "2"]).rounds == 2
    for p in ROWS:
        assert parser.parse_args(["bench", "geo", "--part", p]).part == [p]
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "geo", "--rounds", "0"])


@pytest.mark.unit
def test_the_benchmarks_page_states_the_geo_benchs_targets(tmp_path: Path) -> None:
    from infra.bench.record import Machine, Record
    from infra.docs import benchmarks

    rec = Record(
        bench="geo",
        command="handover bench geo --record",
        date=dt.datetime(2026, 12, 8, 3, 0, tzinfo=dt.UTC),
        commit="0123456789ab",
        machine=Machine(
            cpus=2,
            cpu_model="Xeon",
            memory_gib=24.0,
            kernel="6.1",
            os="Debian GNU/Linux 12 (bookworm)",
            python="3.11.7",
            prefect="3.9.1",
        ),
        result={"ok": True, "summary": summary_lines([row("planned", [planned(0.5)])], 20.0)},
    )
    (tmp_path / "geo.json").write_text(rec.model_dump_json())
    page = benchmarks.page(tmp_path)
    assert "| [geo](#geo) | geo failover of a replicated tool under load" in page
    assert f"Targets: {benchmarks.TARGETS['geo']}" in page
    assert "writes lost: 0 (0-0)" in page


@pytest.mark.lab
def test_a_planned_round_and_a_paced_flood_on_a_bench_geo_lab(
    prefect_api: str, tmp_path: Path
) -> None:
    """The bench's own rounds on a bench lab at the session's lab number: a planned failover
    under the clients' writes, then a flood of some 200 queries paced over the next one."""
    from infra.bench.geo import bench_lab
    from infra.bench.geo_rounds import flood_round, planned_round
    from tests.conftest import _lab_numbers
    from tests.geo_lab import require_geo_lab

    require_geo_lab()
    with bench_lab(tmp_path, 5, octet=next(_lab_numbers)) as g:
        g.flood_threads, g.flood_pause_s, g.flood_min_queries = 2, 0.05, 200
        p = planned_round(g, 0)
        f = flood_round(g, 1)
        assert not g.keep
    assert (p.direction, p.lost, p.fenced_accepts) == ("site-a -> site-b", 0, 0), p
    assert p.acknowledged >= 20 and 0 < p.outage_s < 10, p
    assert f.direction == "site-b -> site-a" and f.threads == 2, f
    assert f.queries >= 200 and f.lost == 0 and f.answered == f.queries, f
    assert (f.flipped_once, f.flipped_back) == (2, 0), f.not_once
