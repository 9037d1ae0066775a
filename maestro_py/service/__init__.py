"""The service-manager files of an agent root (systemd units, launchd plists): their text (`units`, `harden`), what
`maestro service install|sync` was told and the files that makes (`setup`), and keeping the installed ones equal to
it (`sync`). Used by `maestro service`, by `maestro doctor`'s services check and by the daemon's autosync."""
