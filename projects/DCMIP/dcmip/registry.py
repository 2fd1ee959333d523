"""User-facing errors and registry look-ups that name the config key and the choices."""


class UserInputError(Exception):
    """Bad input the user can fix (config, paths, data); the message says what to do.
    ``tools/train_net.py`` prints it without a stack trace."""


class TrainingStopped(RuntimeError):
    """Training cannot go on in a defined way (nothing to cluster, diverged); the message names
    the epoch, the cause and what to change. ``tools/train_net.py`` prints it without a stack
    trace; the last checkpoint is left as it was."""


class UnknownNameError(UserInputError, KeyError):
    def __str__(self):
        return str(self.args[0])


def lookup(registry, name: str, config_key: str):
    try:
        return registry.get(name)
    except KeyError:
        known = ", ".join(sorted(registry._obj_map))
        raise UnknownNameError(f"{config_key}: unknown name {name!r}; choose one of: {known}") from None


class DatasetNotFoundError(UserInputError, FileNotFoundError):
    """A dataset root, folder or file that does not exist."""


class DatasetFormatError(UserInputError, ValueError):
    """A dataset folder whose content does not match the expected layout or naming."""
