"""Policy: vendor hook manifests and the signed, hash-chained exception ledger."""
