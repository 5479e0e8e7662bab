"""The site model: shipped sites load; malformed ones are refused with the field named and a fix."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.loader import SiteConfigError, load_site, parse_site
from config.site import SecretError, SecretRef, read_secret_blocks_with
from tasks.secret_blocks import use_prefect_secret_blocks
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
SITES = ROOT / "config" / "sites"


def base() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((SITES / "lab.yaml").read_text())
    return copy.deepcopy(data)


@pytest.mark.parametrize("name", ["lab.yaml", "cern-fts.yaml"])
def test_shipped_sites_load(name: str) -> None:
    site = load_site(SITES / name)
    assert len(site.channels) >= 6
    assert site.agent("glite-transfer-channel-agent-urlcopy-CERN-CERN").primary == "fts101"
    assert site.agent("glite-transfer-channel-agent-urlcopy-CERN-CERN").backup == "fts102"


def test_lab_site_shape() -> None:
    site = load_site(SITES / "lab.yaml")
    assert len(site.hosts) >= 4
    roles = {r for h in site.hosts for r in h.roles}
    assert {"channel-agents", "vo-agents", "spare"} <= {str(r) for r in roles}
    assert site.slack is not None and site.slack.approvers == ["U0LABOPS1"]
    assert site.slack.bot_token.env == "HANDOVER_SLACK_BOT_TOKEN"
    assert site.slack.signing_secret.env == "HANDOVER_SLACK_SIGNING_SECRET"
    assert site.policy("clean-move").approval == "required"


def test_cern_site_has_the_fts_agent_nodes() -> None:
    site = load_site(SITES / "cern-fts.yaml")
    assert [h.name for h in site.hosts] == ["fts101", "fts102", "fts105"]
    vo_hosts = {a.primary for a in site.service.agents if a.vo}
    assert vo_hosts == {"fts105"}
    assert site.commands.argv("set_channel_state", channel="CERN-CERN", state="Inactive") == [
        "glite-transfer-channel-set",
        "-S",
        "Inactive",
        "CERN-CERN",
    ]


def _mutate(path: list[Any], value: Any, delete: bool = False) -> dict[str, Any]:
    data = base()
    node: Any = data
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return data


# (case id, mutated data, expected field path, words expected in the message or fix)
MALFORMED: list[tuple[str, dict[str, Any], str, str]] = [
    (
        "unknown backup host",
        _mutate(["service", "agents", 0, "backup"], "fts109"),
        "service.agents[0].backup",
        "not defined in hosts",
    ),
    (
        "unknown primary host",
        _mutate(["service", "agents", 2, "primary"], "fts999"),
        "service.agents[2].primary",
        "fts999",
    ),
    (
        "primary equals backup",
        _mutate(["service", "agents", 1, "backup"], "fts101"),
        "service.agents[1].backup",
        "backup host is the primary",
    ),
    (
        "channel name with ;",
        _mutate(["service", "agents", 0, "channel"], "CERN;rm -rf /"),
        "service.agents[0].channel",
        "no spaces, ';'",
    ),
    (
        "channel name with space",
        _mutate(["service", "agents", 3, "channel"], "CERN CERN"),
        "service.agents[3].channel",
        "pattern",
    ),
    ("host name with $", _mutate(["hosts", 1, "name"], "fts$(id)"), "hosts[1].name", "pattern"),
    (
        "missing secret reference",
        _mutate(["slack", "signing_secret"], None, delete=True),
        "slack.signing_secret",
        "add this field",
    ),
    (
        "inline password",
        _mutate(["database", "password"], "hunter2"),
        "database.password",
        "inline secrets are not allowed",
    ),
    (
        "secret reference with two sources",
        _mutate(["database", "password"], {"env": "A", "file": "/x"}),
        "database.password",
        "exactly one",
    ),
    (
        "unknown field (typo)",
        _mutate(["ssh", "conect_timeout_s"], 3),
        "ssh.conect_timeout_s",
        "unknown field",
    ),
    (
        "connect timeout longer than command timeout",
        _mutate(["ssh", "connect_timeout_s"], 60),
        "ssh.connect_timeout_s",
        "longer than command_timeout_s",
    ),
    (
        "proceed on approval timeout for a non-emergency procedure",
        _mutate(["procedures", "clean-move", "on_approval_timeout"], "proceed"),
        "procedures.clean-move.on_approval_timeout",
        "only allowed for emergency",
    ),
    (
        "poll interval not shorter than drain timeout",
        _mutate(["procedures", "clean-move", "poll_interval_s"], 500),
        "procedures.clean-move.poll_interval_s",
        "not shorter",
    ),
    ("duplicate host", _mutate(["hosts", 3, "name"], "fts101"), "hosts[3].name", "defined twice"),
    (
        "a step timeout, which nothing reads",
        _mutate(["procedures", "clean-move", "step_timeout_s"], 60),
        "procedures.clean-move.step_timeout_s",
        "each step is bounded by its verb's own bounds",
    ),
    (
        "the agent user, which nothing reads",
        {**base(), "commands": {"agent_user": "edguser"}},
        "commands.agent_user",
        "remove the line",
    ),
    ("wrong database kind", _mutate(["database", "kind"], "sqlite"), "database.kind", "oracle"),
    (
        "channel states query that is not one SELECT",
        _mutate(["database", "channel_states_query"], "SELECT 1; DELETE FROM channels"),
        "database.channel_states_query",
        "one SELECT",
    ),
    (
        "transfer times query that is not a SELECT",
        _mutate(["database", "transfer_eta_query"], "UPDATE jobs SET state = 'Done'"),
        "database.transfer_eta_query",
        "(channel, seconds still needed)",
    ),
    (
        "channel write that is not one UPDATE",
        _mutate(
            ["database", "channel_set_statement"],
            "UPDATE channels SET state = :state WHERE name = :channel; DROP TABLE jobs",
        ),
        "database.channel_set_statement",
        "one UPDATE",
    ),
    (
        "channel write without the channel's bind",
        _mutate(["database", "channel_set_statement"], "UPDATE channels SET state = :state"),
        "database.channel_set_statement",
        "missing :channel",
    ),
    (
        "channel write with nothing to read it back",
        _mutate(
            ["database", "channel_set_statement"],
            "UPDATE channels SET state = :state WHERE name = :channel",
        ),
        "database",
        "needs channel_states_query",
    ),
    (
        "cut-over window longer than an hour",
        _mutate(["procedures", "clean-move", "cutover_window_s"], 7200),
        "procedures.clean-move.cutover_window_s",
        "3600",
    ),
    (
        "slack approver that is not a user id",
        _mutate(["slack", "approvers"], ["@alice"]),
        "slack.approvers[0]",
        "pattern",
    ),
    (
        "dns alias outside its zone",
        _mutate(["dns", "alias"], "fts.elsewhere.test"),
        "dns",
        "not inside zone",
    ),
    (
        "dns zone that is not a DNS name",
        _mutate(["dns", "zone"], 'lab.test"; allow-update { any; }; "'),
        "dns.zone",
        "pattern",
    ),
    (
        "dns primary given by name (updates would depend on resolving it)",
        _mutate(["dns", "server"], "ns1.lab.test"),
        "dns.server",
        "not an IP address",
    ),
    (
        "dns secondary given by name",
        _mutate(["dns", "secondaries"], [{"address": "ns2.lab.test", "port": 53}]),
        "dns.secondaries[0].address",
        "not an IP address",
    ),
    (
        "gateway-only approvals without a slack section",
        {
            **_mutate(["procedures", "clean-move", "approval_via"], "gateway"),
            "slack": None,
        },
        "procedures.clean-move.approval_via",
        "add a slack section",
    ),
    (
        "command template with a partial placeholder",
        _mutate(["commands"], {"start_agent": ["service", "x", "--instance={agent}"]}),
        "commands",
        "whole word",
    ),
]


@pytest.mark.parametrize(
    ("data", "path", "words"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_site_is_refused_with_the_field_named(
    data: dict[str, Any], path: str, words: str
) -> None:
    with pytest.raises(SiteConfigError) as info:
        parse_site(data, "broken.yaml")
    problems = info.value.problems
    matching = [p for p in problems if p.path == path]
    assert matching, f"no problem at {path}: {[str(p) for p in problems]}"
    assert any(words in f"{p.message} {p.fix}" for p in matching), [str(p) for p in matching]
    assert all(p.fix for p in problems)


def test_every_problem_is_reported_not_only_the_first() -> None:
    data = _mutate(["service", "agents", 0, "backup"], "fts109")
    data["service"]["agents"][1]["backup"] = "fts101"
    with pytest.raises(SiteConfigError) as info:
        parse_site(data)
    paths = {p.path for p in info.value.problems}
    assert {"service.agents[0].backup", "service.agents[1].backup"} <= paths


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("site: lab\nhosts: [\n  - name: x\n")
    with pytest.raises(SiteConfigError) as info:
        load_site(f)
    assert info.value.problems[0].path.startswith("line ")


def test_secret_refs_resolve_without_leaking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HANDOVER_TEST_SECRET", "s3cret-value")
    ref = SecretRef(env="HANDOVER_TEST_SECRET")
    value = ref.resolve()
    assert value.get_secret_value() == "s3cret-value"
    assert "s3cret" not in repr(value) and "s3cret" not in str(value)
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    f.chmod(0o600)
    assert SecretRef(file=f).resolve().get_secret_value() == "from-file"
    monkeypatch.delenv("HANDOVER_TEST_SECRET")
    with pytest.raises(SecretError, match="HANDOVER_TEST_SECRET is not set"):
        ref.resolve()


def test_a_prefect_secret_is_read_by_the_reader_registered() -> None:
    ref = SecretRef(prefect_secret="fts-db-password")
    read_secret_blocks_with(None)
    try:
        with pytest.raises(SecretError, match="reads no Prefect blocks"):
            ref.resolve()
        read_secret_blocks_with(lambda name: f"value of {name}")
        assert ref.resolve().get_secret_value() == "value of fts-db-password"
    finally:
        use_prefect_secret_blocks()


def _secret_file(tmp_path: Path, mode: int) -> Path:
    f = tmp_path / f"secret-{mode:o}"
    f.write_text("s3cret-value\n")
    f.chmod(mode)
    return f


def test_a_private_secret_file_is_read(tmp_path: Path) -> None:
    for mode in (0o600, 0o400):
        f = _secret_file(tmp_path, mode)
        assert SecretRef(file=f).resolve().get_secret_value() == "s3cret-value"


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        (0o644, "its group may read it; others may read it (mode 0644)"),
        (0o640, "its group may read it (mode 0640)"),
        (0o602, "others may write it (mode 0602)"),
    ],
)
def test_a_secret_file_open_to_others_is_refused_naming_the_fix(
    tmp_path: Path, mode: int, says: str
) -> None:
    f = _secret_file(tmp_path, mode)
    with pytest.raises(SecretError) as info:
        SecretRef(file=f).resolve()
    msg = str(info.value)
    assert f"secret from file {f} is not private: {says}" in msg
    assert f"run `chmod 600 {f}`" in msg
    assert "s3cret" not in msg


@pytest.mark.lab
def test_a_secret_file_of_another_user_is_refused_naming_the_fix(tmp_path: Path) -> None:
    import pwd

    require(os.geteuid() == 0, "root (to give a file to the user nobody)", need="lab")
    nobody = pwd.getpwnam("nobody")
    me = pwd.getpwuid(os.geteuid()).pw_name
    f = _secret_file(tmp_path, 0o600)
    os.chown(f, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(SecretError) as info:
        SecretRef(file=f).resolve()
    msg = str(info.value)
    assert f"it belongs to nobody (uid {nobody.pw_uid}), not to {me}" in msg
    assert f"run `chown {me} {f}` as root" in msg
    # both wrong: both fixes, in one command
    f.chmod(0o644)
    with pytest.raises(SecretError, match=rf"`chown {me} {f} && chmod 600 {f}`"):
        SecretRef(file=f).resolve()


def test_a_link_to_a_file_open_to_others_is_refused_naming_the_target(tmp_path: Path) -> None:
    target = _secret_file(tmp_path, 0o644)
    link = tmp_path / "link"
    link.symlink_to(target)
    with pytest.raises(SecretError) as info:
        SecretRef(file=link).resolve()
    msg = str(info.value)
    assert f"secret from file {link} (a link to {target}) is not private" in msg
    assert f"`chmod 600 {target}`" in msg
    # the link to a private file is fine
    target.chmod(0o600)
    assert SecretRef(file=link).resolve().get_secret_value() == "s3cret-value"


def test_a_fifo_or_a_directory_as_secret_file_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(SecretError, match="is not a regular file"):
        SecretRef(file=fifo).resolve()  # never blocks waiting for a writer
    with pytest.raises(SecretError, match="is not a regular file"):
        SecretRef(file=tmp_path).resolve()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


def test_check_config_cli(tmp_path: Path) -> None:
    ok = _cli("check-config", str(SITES / "lab.yaml"), str(SITES / "cern-fts.yaml"))
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout and "cern-fts" in ok.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(_mutate(["service", "agents", 0, "backup"], "fts109")))
    res = _cli("check-config", str(broken))
    assert res.returncode != 0
    assert "service.agents[0].backup" in res.stderr
    assert "fts109" in res.stderr and "fix:" in res.stderr


def test_check_config_secrets_reads_each_reference_and_never_prints_a_value(
    tmp_path: Path,
) -> None:
    """`--secrets` reads every reference as a run would: one that reads is listed ok, a file
    open to others and an unset variable are named with their field path, and no value shows."""
    data = yaml.safe_load((SITES / "lab.yaml").read_text())
    good, loose = tmp_path / "tsig", tmp_path / "webhook"
    good.write_text("c2VjcmV0LXZhbHVlLTEyMzQ1Ng==\n")
    good.chmod(0o600)
    loose.write_text("webhook-secret-value-0123456789\n")
    loose.chmod(0o644)
    data["dns"]["tsig_key"] = {"file": str(good)}
    data["alerts"]["webhook_secret"] = {"file": str(loose)}
    site = tmp_path / "secrets.yaml"
    site.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOVER_")}
    env["HANDOVER_SLACK_BOT_TOKEN"] = "xoxb-bot-token-value"
    res = subprocess.run(
        [sys.executable, "-m", "infra.cli", "check-config", "--secrets", str(site)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        env=env,
    )
    assert res.returncode == 1, res.stdout + res.stderr
    said = " ".join((res.stdout + res.stderr).split())
    assert f"ok dns.tsig_key (file {good}) reads" in said
    assert "ok slack.bot_token (environment variable HANDOVER_SLACK_BOT_TOKEN) reads" in said
    assert f"alerts.webhook_secret (file {loose}):" in said and "chmod 600" in said
    assert "slack.signing_secret (environment variable HANDOVER_SLACK_SIGNING_SECRET):" in said
    assert "export it first" in said
    for value in ("c2VjcmV0LXZhbHVl", "webhook-secret-value", "xoxb-bot-token-value"):
        assert value not in said


def test_check_config_prints_what_looks_like_markup_as_it_is(tmp_path: Path) -> None:
    bad = tmp_path / "markup.yaml"
    bad.write_text(yaml.safe_dump(_mutate(["hosts", 0, "name"], "fts1; rm -rf /")))
    res = _cli("check-config", str(bad))
    assert res.returncode != 0
    flat = " ".join(res.stderr.split())  # rich folds long lines
    assert "^[a-z][a-z0-9-]{0,62}$" in flat, res.stderr


def test_a_site_is_loaded_by_name_from_the_site_directories_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config.loader import load_reviewed_site, load_site_ref

    reviewed, elsewhere = tmp_path / "reviewed", tmp_path / "elsewhere"
    reviewed.mkdir()
    elsewhere.mkdir()
    (reviewed / "mysite.yaml").write_text(yaml.safe_dump(base()))
    (elsewhere / "theirs.yaml").write_text(yaml.safe_dump(base()))
    # a link in the reviewed directory to a file elsewhere is the file elsewhere
    (reviewed / "linked.yaml").symlink_to(elsewhere / "theirs.yaml")
    monkeypatch.setenv("HANDOVER_SITES_DIRS", str(reviewed))
    assert load_reviewed_site("mysite").site == base()["site"]
    assert load_site_ref("mysite").site == base()["site"]
    assert load_reviewed_site(str(reviewed / "mysite.yaml")).site == base()["site"]
    for outside in (
        str(elsewhere / "theirs.yaml"),
        str(reviewed / ".." / "elsewhere" / "theirs.yaml"),
        str(reviewed / "linked.yaml"),
    ):
        with pytest.raises(SiteConfigError, match="site directories only"):
            load_reviewed_site(outside)
    with pytest.raises(SiteConfigError, match="site directories only"):
        load_reviewed_site("linked")
    with pytest.raises(SiteConfigError) as info:
        load_reviewed_site("nosuch")
    assert "no site called 'nosuch'" in str(info.value) and "mysite" in str(info.value)
    with pytest.raises(SiteConfigError):
        load_reviewed_site("theirs")  # a name is looked up in the site directories only
