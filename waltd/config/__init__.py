"""Server configuration, /etc/walt/server.conf: schema, validation with clear messages, files.

`schema` holds the dataclasses and `ConfigError`, whose `problems` say where (file, section,
entry, key) and what is wrong; `validate.parse` checks loaded data, purely; `files` reads a file
within bounds (`load`) and writes one atomically (`save`). Callers use the names below.
"""

from waltd.config.files import MAX_DEPTH, MAX_FILE_SIZE, load, read_data, restart_needed, save
from waltd.config.schema import (
    DEFAULT_PATH,
    EX_CONFIG,
    HUB_DESCRIPTION,
    RELOADABLE,
    Api,
    Boot,
    Config,
    ConfigError,
    Daemon,
    Exports,
    Images,
    Problem,
    Registry,
    WaltNet,
    default_config,
    to_data,
)
from waltd.config.validate import parse

__all__ = [
    "DEFAULT_PATH",
    "EX_CONFIG",
    "HUB_DESCRIPTION",
    "MAX_DEPTH",
    "MAX_FILE_SIZE",
    "RELOADABLE",
    "Api",
    "Boot",
    "Config",
    "ConfigError",
    "Daemon",
    "Exports",
    "Images",
    "Problem",
    "Registry",
    "WaltNet",
    "default_config",
    "load",
    "parse",
    "read_data",
    "restart_needed",
    "save",
    "to_data",
]
