"""The geo lab: two simulated sites sharing a replicated operations tool, for geo failover.

A tool (a web application and its MariaDB database) is active at one site and replicated to the
other with MariaDB's GTID replication; its names live in a zone served by one BIND9 master per
site (each a primary of its own, both updated by handover); clients resolve the names through
caching resolvers that honour the TTL. Everything is real: ``mariadbd`` from Debian's
mariadb-server, ``named`` from bind9, an HTTPS tool served by `infra.lab.geo.tool`.

The modules, one concept each:

* `infra.lab.geo.lab`: `GeoLab`, the programmatic interface (up, down, status, faults).
* `infra.lab.geo.derive`: a copy of a geo site file at other addresses, ports and state.
* `infra.lab.geo.paths`: where the geo lab keeps its state.
* `infra.lab.geo.procs`: processes started, recognised and stopped by PID.
* `infra.lab.geo.secrets`: the lab's secrets and certificates.
* `infra.lab.geo.mariadb`: one MariaDB server per tool and site, and its replication.
* `infra.lab.geo.dns`: the zone's masters and the sites' caching resolvers.
* `infra.lab.geo.dnsview`: how the tool reads where it is active from the masters.
* `infra.lab.geo.tool`: the tool, an HTTPS application (``python -m infra.lab.geo.tool``).
* `infra.lab.geo.toolproc`: the tool's processes, as the lab configures and starts them.
* `infra.lab.geo.clients`: a load generator writing through the tool's name, and its score.
* `infra.lab.geo.observe`: how the lab is seen from outside (`GeoLab.status`).
* `infra.lab.geo.views`: what `GeoLab.status` reports.
"""
