"""The fleet server: hosts enrol and send signed reports; the server notices what no single
host can (silent hosts, re-created baselines) and serves the exception ledger."""
