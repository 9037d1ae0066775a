"""`maestro doctor`'s check of the installed service files: do they still match `cadences.toml` and `.env`?

Read-only: the same plan `maestro service sync` would carry out, from the options `install`/`sync` recorded in
`state/service.json`; nothing is written and no manager is called.
"""

from __future__ import annotations

from maestro_py.config import Settings
from maestro_py.errors import ConfigError
from maestro_py.ops.probe import Check, Level, Probe
from maestro_py.registry import Registry, RegistryError
from maestro_py.service import setup
from maestro_py.service import sync
from maestro_py.service import units as svc


def check_services(p: Probe) -> Check:
    """Installed service files in step with the registry (a timer per scheduled cadence, none left over)."""
    options = setup.saved_options(p.layout)
    if options is None:
        return Check("services", Level.OK, "not installed as a service (`maestro service install`)")
    try:
        settings = Settings.from_env(p.env)
        registry = Registry.load(p.layout)
    except (ConfigError, RegistryError):
        return Check("services", Level.WARN, "skipped: the settings or cadences.toml are invalid (see above)")
    try:
        target = setup.build(p.layout, options, settings=settings, registry=registry, env=dict(p.env))
        files = sync.installed(options.manager, target.dest, target.spec.name, target.spec.root)
        plan = sync.plan(options.manager, options.user, target.files, target.dest, target.spec.name,
                         target.spec.root)
    except (svc.ServiceError, OSError) as exc:
        return Check("services", Level.WARN, f"cannot compare with the installed files: {exc}")
    if not any(sync.is_long_running(f) for f in files):
        return Check("services", Level.WARN, f"the daemon's {options.manager} file is not in {target.dest} (removed "
                                             "by hand?): `maestro service install` puts it back")
    if plan.up_to_date:
        return Check("services", Level.OK, f"{len(files)} {options.manager} file(s) in {target.dest}, in step with "
                                           "cadences.toml")
    verbs = {"added": "to add", "changed": "to rewrite", "removed": "to remove"}
    what = [f"{verbs[kind]}: {', '.join(names)}" for kind, names in plan.summary().items() if names]
    return Check("services", Level.WARN, f"{target.dest} is out of step with cadences.toml ({'; '.join(what)}): "
                                         "run `maestro service sync` (or set MAESTRO_SERVICE_AUTOSYNC=1)")
