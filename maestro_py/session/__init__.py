"""One `claude --print` sub-session: its command, its process tree, its metering and its ledger row."""
