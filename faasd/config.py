"""The daemon's configuration: frozen dataclasses, loaded defaults → file → env → overrides.

`configs/faasd.yaml` documents every key with its default. The file is optional; every
environment variable `FAASD_<KEY>` (upper case, e.g. `FAASD_PORT=9000`, `FAASD_SCHEDULER=fcfs`)
overrides the file, and explicit overrides (the `faasd up` flags) override both. Unknown keys
are errors that name the key and list the known ones, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from faasd.functions.spec import FunctionSettings

MIB = 1024 * 1024


def faasd_version() -> str:
    """The installed package's version (or "unknown" when run from a bare source tree)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("faasd")
    except PackageNotFoundError:
        return "unknown"


class ConfigError(ValueError):
    """A configuration file, variable or flag that cannot be used; the message says which."""


@dataclass(frozen=True)
class DaemonConfig:
    """Everything `faasd up` needs. Units are in the names.

    `node_vcpu` 0 means "every core this process may use". `functions_dir` (if set) is scanned
    at start: every sub-directory is deployed before READY=1. `function_defaults` are the
    settings a function's own faasd.yaml overrides.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: Path = Path("state")
    functions_dir: Path | None = None
    scheduler: str = "fcfs"
    max_body_mb: int = 64
    node_vcpu: int = 0
    max_sandboxes: int = 32
    cgroup_parent: str = "faasd"
    max_queue_per_function: int = 1024
    drain_timeout_s: float = 30.0
    log_level: str = "info"
    function_defaults: FunctionSettings = field(default_factory=FunctionSettings)

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_mb * MIB

    @property
    def vcpu_capacity(self) -> int:
        if self.node_vcpu > 0:
            return self.node_vcpu
        return max(1, len(os.sched_getaffinity(0)))

    def validate(self) -> DaemonConfig:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port}")
        if self.max_body_mb < 1:
            raise ConfigError(f"max_body_mb must be >= 1, got {self.max_body_mb}")
        if self.node_vcpu < 0:
            raise ConfigError(f"node_vcpu must be >= 0 (0 = all cores), got {self.node_vcpu}")
        if self.max_queue_per_function < 1:
            raise ConfigError("max_queue_per_function must be >= 1")
        if self.drain_timeout_s < 0:
            raise ConfigError("drain_timeout_s must be >= 0")
        from esg.policies import POLICIES

        if self.scheduler not in POLICIES:
            known = ", ".join(sorted(POLICIES))
            raise ConfigError(f"unknown scheduler {self.scheduler!r}; choose one of: {known}")
        return self


_TOP_KEYS = {f.name: f for f in fields(DaemonConfig)}
_SETTING_KEYS = {f.name: f for f in fields(FunctionSettings)}


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DaemonConfig:
    """Defaults, then the YAML file at `path` (if given), then `FAASD_*` env, then overrides.

    Overrides whose value is None are ignored (unset command-line flags).
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(path))
    values.update(_from_env(os.environ if env is None else env))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return _build(values, source=str(path) if path else "settings")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass --config FILE") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    return loaded


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key in _TOP_KEYS:
        if key == "function_defaults":
            continue
        raw = env.get(f"FAASD_{key.upper()}")
        if raw is not None and raw != "":
            found[key] = raw
    return found


def _build(values: Mapping[str, Any], source: str) -> DaemonConfig:
    unknown = sorted(set(values) - set(_TOP_KEYS))
    if unknown:
        known = ", ".join(sorted(_TOP_KEYS))
        raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; known keys: {known}")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key == "function_defaults":
            kwargs[key] = _settings(value, source)
        else:
            kwargs[key] = _coerce(key, value, source)
    return DaemonConfig(**kwargs).validate()


def _settings(value: Any, source: str) -> FunctionSettings:
    if isinstance(value, FunctionSettings):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: function_defaults must be a mapping")
    unknown = sorted(set(value) - set(_SETTING_KEYS))
    if unknown:
        known = ", ".join(sorted(_SETTING_KEYS))
        raise ConfigError(
            f"{source}: unknown function_defaults key(s) {', '.join(unknown)}; known: {known}"
        )
    base = FunctionSettings()
    coerced: dict[str, Any] = {}
    for key, raw in value.items():
        default = getattr(base, key)
        if key == "env":
            coerced[key] = {str(k): str(v) for k, v in (raw or {}).items()}
        elif key == "slo_ms" and raw is None:
            coerced[key] = None
        else:
            kind = float if isinstance(default, float) or default is None else type(default)
            coerced[key] = _convert(f"function_defaults.{key}", raw, kind, source)
    return dataclasses.replace(base, **coerced)


def _coerce(key: str, value: Any, source: str) -> Any:
    if key in ("state_dir", "functions_dir"):
        return None if value is None else Path(str(value)).expanduser()
    default = _TOP_KEYS[key].default
    kind = type(default) if default is not dataclasses.MISSING else str
    return _convert(key, value, kind, source)


def _convert(key: str, value: Any, kind: type, source: str) -> Any:
    try:
        if kind is bool:
            return str(value).lower() in ("1", "true", "yes", "on")
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{source}: {key} must be a {kind.__name__}, got {value!r}"
        ) from None
