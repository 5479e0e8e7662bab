"""The verbs of a geo failover: a tool's database at one site (read-only, wait, promote,
replicate, rebuild) and the tool's names on every DNS master.

The step's `host` is the site the verb acts on (a geo site's name, not a host of `hosts:`).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from flows.plans.step import Ledger, Step


class DbReadOnly(Step):
    """Set the tool's database at the site read-only (the tool can no longer commit there), or
    writable again (`on` False: the compensation of a planned failover that did not promote)."""

    verb: Literal["db-read-only"] = "db-read-only"
    tool: str
    on: bool = True

    PRE: ClassVar[str] = "the site's database answers"
    POST: ClassVar[str] = "the site's database is read-only: the tool refuses writes there"


class WaitApplied(Step):
    """Wait until the site's replica has applied everything its source has written."""

    verb: Literal["wait-applied"] = "wait-applied"
    tool: str
    #: the site whose position is waited for (read when the step runs)
    source: str
    #: the bound of the wait
    timeout_s: float

    PRE: ClassVar[str] = "the source is read-only (its position no longer moves)"
    POST: ClassVar[str] = "the replica has applied every transaction of its source"


class PromoteReplica(Step):
    """Make the site's replica the tool's primary, with a newer fencing epoch."""

    verb: Literal["promote-replica"] = "promote-replica"
    tool: str
    epoch: int

    PRE: ClassVar[str] = "the database's fencing epoch is not newer than the step's"
    POST: ClassVar[str] = (
        "the site's database replicates from nobody, is writable and holds the step's epoch"
    )


class RepointNames(Step):
    """Point the tool's names at the site's address with the new epoch, on every master
    (a compare-and-set on each)."""

    verb: Literal["repoint-names"] = "repoint-names"
    tool: str
    #: the names to move
    names: list[str]
    #: the new address
    address: str
    #: the epoch the names' TXT records get
    epoch: int
    #: what each master must hold now, by master (``address:port``): the addresses, and the
    #: epoch; a master not listed was silent when planned (it is tried all the same)
    expect: dict[str, list[str]] = Field(default_factory=dict)
    expect_epoch: dict[str, int | None] = Field(default_factory=dict)
    #: the least number of masters of each site that must take the change; a site none of
    #: whose masters answers is left behind (the drift watch repairs it)
    minimum: dict[str, int] = Field(default_factory=dict)

    PRE: ClassVar[str] = "each master holds what the step expects (compare-and-set)"
    POST: ClassVar[str] = "every master that answers holds the new address and epoch"

    def done(self, ledger: Ledger) -> None:
        ledger.alias_moved = True


class ReplicateFrom(Step):
    """Make the site's database (read-only) a replica of another site's, from its own
    position."""

    verb: Literal["replicate-from"] = "replicate-from"
    tool: str
    source: str

    PRE: ClassVar[str] = "the site's database has nothing its new source lacks"
    POST: ClassVar[str] = "the site's database replicates from the source"


class RebuildReplica(Step):
    """Rebuild the site's database from a dump of another site's and replicate from it; its
    old content is kept in a file first."""

    verb: Literal["rebuild-replica"] = "rebuild-replica"
    tool: str
    source: str
    #: where the site's old content is kept
    keep_dir: str

    PRE: ClassVar[str] = "the source is the tool's primary"
    POST: ClassVar[str] = "the site's database replicates from the source; its old content is kept"


class AwaitResolvers(Step):
    """Wait until every resolver answers the tool's names with the new address (the TTL)."""

    verb: Literal["await-resolvers"] = "await-resolvers"
    tool: str
    names: list[str]
    address: str
    timeout_s: float

    PRE: ClassVar[str] = "the masters hold the new address"
    POST: ClassVar[str] = "every resolver that answers gives the new address"
