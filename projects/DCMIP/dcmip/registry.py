"""Registry look-up with an error that names the config key and the registered choices."""


def lookup(registry, name: str, config_key: str):
    try:
        return registry.get(name)
    except KeyError:
        known = ", ".join(sorted(registry._obj_map))
        raise KeyError(f"{config_key}: unknown name {name!r}; choose one of: {known}") from None
