"""The HA group daemon: signed heartbeats, election by rank, takeover and give-up."""
