"""Small single-purpose building blocks: per-sample losses, gates, aggregators, adapters."""
