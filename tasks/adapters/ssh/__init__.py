"""The SSH layer: run commands on the site's hosts over pooled, host-key-checked connections.

This module holds no Prefect code. The tasks that act on agents, channels and hosts call it.

Contract of the adapter (what callers may rely on):

* **Host keys are checked, never learned.** Only ``SshSettings.known_hosts`` is consulted (not
  ``~/.ssh/known_hosts``, not the system file). An unknown or changed host key raises
  :class:`HostKeyError`; nothing is ever written to the known_hosts file.
* **Only the configured key authenticates.** No agent, no ``~/.ssh/id_*`` discovery.
* **Every wait has a bound.** Connecting is bounded by ``connect_timeout`` per phase (TCP, SSH
  banner/handshake, authentication); a command is bounded, wall clock, by its ``timeout`` (from the
  moment the connection is available to the last byte of output). On timeout the channel is closed
  and :class:`CommandTimeout` raised; the remote process may still run (SSH has no reliable kill).
* **Errors are classified by the recovery they call for.** :class:`TransientSshError`: worth a
  retry (refused, timed out, dropped). :class:`PermanentSshError`: a retry cannot help (auth
  failed, host key, key file, known_hosts, a failed command with ``check=True``). Every error has
  ``.host`` and ``.command`` and a message that says what happened, where, and what to do next.
* **One connection per host, reused.** Commands on one host share one transport (concurrent
  channels, at most ``MAX_SESSIONS_PER_HOST`` at once, below OpenSSH's ``MaxSessions`` default
  of 10). A cached connection that died is reconnected transparently, once, before the command is
  sent; a command that was already sent is never re-sent.
* **A command gets EOF on stdin** right after the ``stdin`` text (or at once if there is none), so
  a remote ``cat`` or ``read`` never hangs the flow.
* **Secrets:** the command line appears in results and error messages. Pass secrets through
  ``stdin``, never on the command line. Private key material never appears in any message.

The package, along that contract: `models` (endpoints, settings, results), `errors` (the classes
of failure), `host_keys` (known_hosts, never learned), `connect` (key and connection),
`diagnosis` (what each failure means and what to do), `channel` (one command on one channel) and
`pool` (`SshPool`: connections cached per host, one command, a batch, a fan-out).
"""

from flows.plans.argv import shell_command
from tasks.adapters.ssh.channel import MAX_OUTPUT_BYTES
from tasks.adapters.ssh.errors import (
    CommandFailed,
    CommandTimeout,
    HostKeyError,
    PermanentSshError,
    SshError,
    TransientSshError,
)
from tasks.adapters.ssh.models import CommandResult, CommandSpec, SshEndpoint, SshSettings
from tasks.adapters.ssh.pool import MAX_SESSIONS_PER_HOST, SshPool

__all__ = [
    "MAX_OUTPUT_BYTES",
    "MAX_SESSIONS_PER_HOST",
    "CommandFailed",
    "CommandResult",
    "CommandSpec",
    "CommandTimeout",
    "HostKeyError",
    "PermanentSshError",
    "SshEndpoint",
    "SshError",
    "SshPool",
    "SshSettings",
    "TransientSshError",
    "shell_command",
]
