"""The verbs' registry: every verb is one step class with one act, plans read from a file get
each step as its own kind, and the executor names no verb."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from config.loader import load_site
from flows.plans.model import Chain, Phase, Plan
from flows.plans.verbs import VERBS, HandOver, MoveAlias, Stop, step
from tasks.verbs import ACTS
from tests.conftest import LAB_SITE

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parent.parent


def test_every_verb_has_one_class_and_one_act() -> None:
    assert set(ACTS) == set(VERBS.values())
    assert len(VERBS) == 27
    for name, cls in VERBS.items():
        assert cls.model_fields["verb"].default == name
        assert cls.PRE and cls.POST, f"{name}: its conditions are missing"


def test_a_plan_read_back_gets_each_step_as_its_own_kind() -> None:
    site = load_site(LAB_SITE)
    steps = [
        step(site, "a", "stop", "fts101", ["agent-a"], all_agents=True),
        step(site, "b", "hand-over", "fts101", ["agent-a"], ["CERN-CERN"], target="fts102"),
    ]
    steps[0].fallback = [step(site, "c", "start", "fts101", ["agent-a"])]
    plan = Plan(
        procedure="p",
        site=site.site,
        ok=True,
        phases=[Phase(name="x", chains=[Chain(name="y", steps=steps)])],
    )
    back = Plan.model_validate_json(plan.model_dump_json())
    assert back == plan
    stop, hand_over = back.steps
    assert isinstance(stop, Stop) and stop.all_agents
    assert stop.commands == ["service transfer-agents stop"]
    assert type(stop.fallback[0]).__name__ == "Start"
    assert isinstance(hand_over, HandOver) and hand_over.target == "fts102"


def test_a_step_says_exactly_what_its_verb_needs() -> None:
    # a hand-over without the host of its standbys
    with pytest.raises(ValidationError, match="target"):
        HandOver(id="x", host="fts101", agents=["a"])
    # a parameter of another verb
    with pytest.raises(ValidationError, match="epoch"):
        Stop.model_validate({"id": "x", "host": "fts101", "epoch": 3})
    # a move of the alias without its new address and epoch
    with pytest.raises(ValidationError, match="address"):
        MoveAlias(id="x", host="fts101", epoch=2)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="verb"):
        Chain.model_validate({"name": "c", "steps": [{"id": "x", "verb": "reboot", "host": "h"}]})


def test_the_executor_names_no_verb() -> None:
    text = (ROOT / "flows" / "executor.py").read_text()
    named = [v for v in VERBS if re.search(rf"[\"']{re.escape(v)}[\"']", text)]
    assert named == []
    assert "step.verb ==" not in text
    # a step's kind is its class: no test of a step's verb name anywhere (records may be read
    # by their verb: they are what happened, not what to do)
    steps_tested = re.compile(r"\b(step|steps?|st|s|f|x)\.verb\s*(==|!=|in\b)")
    for path in [
        *ROOT.glob("flows/**/*.py"),
        *ROOT.glob("tasks/**/*.py"),
        *ROOT.glob("infra/**/*.py"),
    ]:
        found = steps_tested.search(path.read_text())
        assert found is None, f"{path}: {found and found.group(0)}"
