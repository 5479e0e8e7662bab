"""The HA group daemon (seed 003): signed heartbeats, election by rank, takeover and give-up."""
