"""The lab's job stream, and the clean-move bench's choice of when to cut over (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.loader import load_site
from infra.bench.clean_move import (
    GUARD_AFTER_S,
    GUARD_BEFORE_S,
    WORKLOAD,
    pending_within,
    pick_scenario,
)
from infra.lab.lab import derive_site_file
from infra.lab.settings import lab_settings
from infra.lab.workload import Workload, trace
from tests.conftest import ROOT


def _bench_site(tmp_path, eta_error: float = 0.0):  # type: ignore[no-untyped-def]
    return load_site(
        derive_site_file(
            ROOT / "config" / "sites" / "lab.yaml",
            tmp_path / f"bench-eta{round(eta_error * 100)}.yaml",
            name="benchmove",
            octet=250,
            db_port=20250,
            state_dir=Path("/var/tmp/handover-lab/bench-workload-test"),  # never started
            lab={**WORKLOAD, "transfers": {**WORKLOAD["transfers"], "eta_error": eta_error}},
        )
    )


def test_a_channels_stream_does_not_depend_on_the_others_or_the_ticks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    site = _bench_site(tmp_path)
    a, b = site.channels[:2]
    # one tick per job, channels interleaved, against a late tick that submits five of one
    # channel before the other's
    w1, w2 = Workload(site), Workload(site)
    interleaved = [(w1.next_job(a), w1.next_job(b)) for _ in range(5)]
    batched_a = [w2.next_job(a) for _ in range(5)]
    batched_b = [w2.next_job(b) for _ in range(5)]
    assert [x for x, _ in interleaved] == batched_a
    assert [y for _, y in interleaved] == batched_b
    assert trace(site, a, 5) == [d for _, d in batched_a]
    assert all(vo in ("atlas", "cms") for vo, _ in batched_a)
    # another seed, another stream
    assert site.lab is not None
    seed = lab_settings(site).transfers.seed
    other = site.model_copy(
        update={
            "lab": {**site.lab, "transfers": {**site.lab.get("transfers", {}), "seed": seed + 1}}
        }
    )
    assert trace(other, a, 20) != trace(site, a, 20)


def test_the_cut_over_is_clear_of_long_starts_and_finds_long_transfers_running(tmp_path) -> None:  # type: ignore[no-untyped-def]
    site = _bench_site(tmp_path)
    lab = lab_settings(site)
    moved = [a.channel for a in site.agents_on("fts101") if a.channel]
    sc = pick_scenario(site, moved, 6.0)
    assert sc.start_offset_s >= 6.0
    assert len(sc.long_in_flight_s) >= 2
    lo = lab.transfers.long_s[0]
    rate = lab.jobs_per_second_per_channel
    for ch in moved:
        for k, d in enumerate(trace(site, ch, 60)):
            if d >= lo:  # a long one: submitted k / rate s after the first submission
                t = k / rate
                assert (
                    not sc.start_offset_s - GUARD_BEFORE_S <= t <= sc.start_offset_s + GUARD_AFTER_S
                )
                if t < sc.start_offset_s - GUARD_BEFORE_S and t + d > sc.start_offset_s + 1:
                    assert round(t + d - sc.start_offset_s, 2) in sc.long_in_flight_s[ch]
    # the same inputs, the same scenario: every round and mode of one run, and every run
    assert pick_scenario(site, moved, 6.0) == sc


def test_the_limit_counts_only_time_with_pending_work() -> None:
    """The lab's score counts a channel down only while it has pending work: the limit over
    [a, b] is the union of the jobs' waits (submitted -> started) within it."""

    assert pending_within([], 0.0, 5.0) == 0.0
    # a wait before the window, one across its start, two overlapping, one after it
    waits = [(-3.0, -1.0), (-0.5, 1.0), (2.0, 3.5), (3.0, 4.0), (6.0, 9.0)]
    assert pending_within(waits, 0.0, 5.0) == pytest.approx(1.0 + 2.0)
    assert pending_within([(1.0, 10.0)], 0.0, 5.0) == pytest.approx(4.0)


def test_the_estimates_error_leaves_the_durations_and_stays_within_its_bound(tmp_path) -> None:  # type: ignore[no-untyped-def]
    exact, wrong = _bench_site(tmp_path), _bench_site(tmp_path, 0.3)
    ch = exact.channels[0]
    w0, w1 = Workload(exact), Workload(wrong)
    jobs0 = [(w0.next_job(ch), w0.eta_factor(ch)) for _ in range(200)]
    jobs1 = [(w1.next_job(ch), w1.eta_factor(ch)) for _ in range(200)]
    # the same transfers whatever the error: only what the estimate says of them differs
    assert [j for j, _ in jobs0] == [j for j, _ in jobs1]
    assert {f for _, f in jobs0} == {1.0}
    factors = [f for _, f in jobs1]
    assert all(0.7 <= f <= 1.3 for f in factors) and min(factors) < 0.8 and max(factors) > 1.2
    # drawn per transfer, the same on every run
    w2 = Workload(wrong)
    assert [(w2.next_job(ch), w2.eta_factor(ch))[1] for _ in range(200)] == factors


def test_the_bench_runs_the_pipelined_move_at_each_error_of_the_estimates() -> None:
    from infra.bench.clean_move import VARIANTS, eta_variant, variants

    assert variants(()) == VARIANTS
    chosen = variants((0.3, 0.6))
    assert chosen[eta_variant(0.3)] == ("pipelined", True, VARIANTS["pipelined"][2], 0.3)
    assert list(chosen) == [*VARIANTS, "pipelined_eta30", "pipelined_eta60"]
