"""The daemon's configuration: frozen dataclasses, loaded defaults → file → env → overrides.

`configs/faasd.yaml` documents every key with its default. The file is optional; every
environment variable `FAASD_<KEY>` (upper case, e.g. `FAASD_PORT=9000`, `FAASD_SCHEDULER=fcfs`)
overrides the file, and explicit overrides (the `faasd up` flags) override both. Unknown keys
are errors that name the key and list the known ones, so a typo never passes silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from faasd.cluster.settings import ClusterConfigError, ClusterSettings, cluster_settings
from faasd.errors import clip
from faasd.functions.limits import NodeLimits
from faasd.functions.settings import check_setting, merge_settings
from faasd.functions.spec import FunctionSettings
from faasd.gpu.settings import GpuSettings, parse_gpu

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
    at start: every sub-directory is deployed before READY=1; then every sub-directory of
    `workflows_dir` (if set) that holds a workflow.yaml. `function_defaults` are the
    settings a function's own faasd.yaml overrides.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: Path = Path("state")
    functions_dir: Path | None = None
    workflows_dir: Path | None = None
    scheduler: str = "esg"
    max_body_mb: int = 64
    #: the largest answer frame a sandbox may send the daemon (see `max_answer_bytes`)
    max_answer_mb: int = 64
    node_vcpu: int = 0
    max_sandboxes: int = 32
    cgroup_parent: str = "faasd"
    max_queue_per_function: int = 1024
    drain_timeout_s: float = 30.0
    log_level: str = "info"
    #: run a small profile in the background after each deploy (faasd.profiles.service)
    profile_on_deploy: bool = True
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    min_body_rate_bps: float = 65536.0
    idle_timeout_s: float = 75.0
    max_connections: int = 2048
    deploy_timeout_s: float = 60.0
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    #: who may read /metrics once API tokens exist: "admin", "invoke" (any token) or "open"
    metrics_access: str = "admin"
    #: run sandboxes with cgroups only where bubblewrap cannot confine them (else refuse to start)
    allow_unconfined: bool = False
    #: how long the answer of an async call is kept after it ends
    async_result_retention_s: float = 86400.0
    #: async calls one function, or one workflow, may have queued or running; past it, 429
    max_async_queue_per_function: int = 1000
    #: how large an uploaded archive's tar stream may unpack, headers included (0: 4 x
    #: max_body_mb)
    max_unpacked_mb: int = 0
    function_defaults: FunctionSettings = field(default_factory=FunctionSettings)
    limits: NodeLimits = field(default_factory=NodeLimits)
    #: the `gpu:` section (faasd.gpu.settings); FAASD_GPU_MODE / FAASD_GPU_FAKE override it
    gpu: GpuSettings = field(default_factory=GpuSettings)
    # the cluster (faasd/cluster/settings.py); no cluster_addr = one node, its own leader
    cluster_addr: str | None = None
    join: tuple[str, ...] = ()
    voter: bool = False
    etcd: tuple[str, ...] = ()
    gossip_key_file: Path | None = None
    node_name: str | None = None

    @property
    def max_body_bytes(self) -> int:
        return self.max_body_mb * MIB

    @property
    def max_answer_bytes(self) -> int:
        """A sandbox's answer is read into the daemon's memory before anything can look at
        it, so what a sandbox may make the daemon hold is bounded like a request body, and by
        default as large: the frame carries a batch's results but not its large tensors, which
        cross through shared memory (up to 256 MiB more). A larger frame is a protocol
        violation: the sandbox is killed and its call answers 502."""
        return self.max_answer_mb * MIB

    @property
    def max_unpacked_bytes(self) -> int:
        return (self.max_unpacked_mb or 4 * self.max_body_mb) * MIB

    @property
    def vcpu_capacity(self) -> int:
        if self.node_vcpu > 0:
            return self.node_vcpu
        return max(1, len(os.sched_getaffinity(0)))

    def cluster_settings(self) -> ClusterSettings | None:
        """The checked cluster settings (reads the gossip key file); None without
        `cluster_addr`. A setting that cannot work is a `ConfigError` that says the fix."""
        if self.cluster_addr is None:
            if self.join or self.voter or self.etcd:
                raise ConfigError("join, voter and etcd need cluster_addr (--cluster-addr "
                                  "HOST[:PORT], the address this node gossips on)")
            return None
        try:
            return cluster_settings(self.cluster_addr, self.join, self.voter, self.etcd,
                                    self.gossip_key_file, self.node_name)
        except ClusterConfigError as exc:
            raise ConfigError(str(exc)) from None

    def validate(self, where: Mapping[str, str] | None = None) -> DaemonConfig:
        """Range checks; `where` says where each key's value came from (for the message)."""
        def fail(key: str, problem: str) -> ConfigError:
            return ConfigError(f"{(where or {}).get(key, 'settings')}: {key} {problem}")

        if not 0 <= self.port <= 65535:
            raise fail("port", f"must be in 0..65535, got {self.port}")
        if self.max_body_mb < 1:
            raise fail("max_body_mb", f"must be >= 1, got {self.max_body_mb}")
        if self.max_answer_mb < 1:
            raise fail("max_answer_mb", f"must be >= 1, got {self.max_answer_mb}")
        if self.node_vcpu < 0:
            raise fail("node_vcpu", f"must be >= 0 (0 = all cores), got {self.node_vcpu}")
        if self.max_sandboxes < 1:
            raise fail("max_sandboxes", f"must be >= 1, got {self.max_sandboxes}")
        if self.max_queue_per_function < 1:
            raise fail("max_queue_per_function",
                       f"must be >= 1, got {self.max_queue_per_function}")
        if self.drain_timeout_s < 0:
            raise fail("drain_timeout_s", f"must be >= 0, got {self.drain_timeout_s}")
        problem = self._availability_problem()
        if problem is not None:
            raise fail(*problem)
        if self.log_level.lower() not in LOG_LEVELS:
            raise fail("log_level",
                       f"must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        self._validate_async_and_access(fail)
        from esg.policies import POLICIES

        if self.scheduler not in POLICIES:
            known = ", ".join(sorted(POLICIES))
            raise fail("scheduler", f"{self.scheduler!r} is unknown; choose one of: {known}")
        self.cluster_settings()
        return self

    def _availability_problem(self) -> tuple[str, str] | None:
        """(key, problem) for the first bad connection or deploy limit, else None."""
        for key in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            if not 0 < getattr(self, key) <= 3600:
                return key, f"must be in (0, 3600] seconds, got {getattr(self, key)}"
        if self.min_body_rate_bps < 0:
            return "min_body_rate_bps", f"must be >= 0, got {self.min_body_rate_bps}"
        if self.max_connections < 16:
            return "max_connections", f"must be >= 16, got {self.max_connections}"
        if not 0 < self.deploy_timeout_s <= MAX_DEPLOY_TIMEOUT_S:
            return ("deploy_timeout_s", f"must be in (0, {MAX_DEPLOY_TIMEOUT_S:g}] seconds, "
                    f"got {self.deploy_timeout_s}")
        return None


    def _validate_async_and_access(self, fail: Callable[[str, str], ConfigError]) -> None:
        if self.async_result_retention_s <= 0:
            raise fail("async_result_retention_s",
                       f"must be > 0, got {self.async_result_retention_s}")
        if self.max_unpacked_mb < 0:
            raise fail("max_unpacked_mb", f"must be >= 0 (0 = 4 x max_body_mb), got "
                                          f"{self.max_unpacked_mb}")
        if self.max_async_queue_per_function < 1:
            raise fail("max_async_queue_per_function",
                       f"must be >= 1, got {self.max_async_queue_per_function}")
        if self.metrics_access not in ("admin", "invoke", "open"):
            raise fail("metrics_access",
                       f"must be admin, invoke or open, got {self.metrics_access!r}")


LOG_LEVELS = ("debug", "info", "warning", "error")
#: Loading a new version may not hold a deploy longer than this, whatever the file says.
MAX_DEPLOY_TIMEOUT_S = 600.0


_TOP_KEYS = {f.name: f for f in fields(DaemonConfig)}
_SETTING_KEYS = {f.name: f for f in fields(FunctionSettings)}


def load_config(
    path: Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> DaemonConfig:
    """Defaults, then the YAML file at `path` (if given), then `FAASD_*` env, then overrides.

    Overrides whose value is None are ignored (unset command-line flags). Every error names
    where the bad value came from: the file, the environment variable, or the command line.
    """
    values: dict[str, Any] = {}
    where: dict[str, str] = {}
    if path is not None:
        from_file = _flatten_sandbox(_read_file(path), path)
        unknown = sorted(set(from_file) - set(_TOP_KEYS))
        if unknown:
            known = ", ".join(sorted([*_TOP_KEYS, "sandbox"]))
            raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; known keys: {known}")
        values.update(from_file)
        where.update(dict.fromkeys(from_file, str(path)))
    for key, raw in _from_env(os.environ if env is None else env).items():
        values[key] = raw
        where[key] = f"environment variable FAASD_{key.upper()}"
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = value
            where[key] = "the command line"
    kwargs: dict[str, Any] = {}
    gpu_env = {k: v for k, v in (os.environ if env is None else env).items()
               if k in ("FAASD_GPU_MODE", "FAASD_GPU_FAKE")}
    if "gpu" in values or gpu_env:
        try:
            kwargs["gpu"] = parse_gpu(values.pop("gpu", None), gpu_env)
        except ValueError as exc:
            source = where.get("gpu", "environment variables FAASD_GPU_MODE / FAASD_GPU_FAKE")
            raise ConfigError(f"{source}: {exc}") from None
    for key, value in values.items():
        if key == "function_defaults":
            kwargs[key] = _settings(value, where[key])
        elif key == "limits":
            kwargs[key] = _limits(value, where[key])
        else:
            kwargs[key] = _coerce(key, value, where[key])
    return DaemonConfig(**kwargs).validate(where)


#: The keys of the file's `sandbox:` section (`sandbox: {allow_unconfined: true}`), each the
#: same as the top-level key of its name.
_SANDBOX_KEYS = ("allow_unconfined",)


def _flatten_sandbox(from_file: dict[str, Any], path: Path) -> dict[str, Any]:
    """The file's settings with its `sandbox:` section's keys moved to the top level."""
    if "sandbox" not in from_file:
        return from_file
    flat = dict(from_file)
    section = flat.pop("sandbox")
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: sandbox must be a mapping, e.g. sandbox: "
                          "{allow_unconfined: false}")
    unknown = sorted(set(section) - set(_SANDBOX_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) under sandbox: {', '.join(map(str, unknown))}"
                          f"; known: {', '.join(_SANDBOX_KEYS)}")
    for key, value in section.items():
        if key in flat:
            raise ConfigError(f"{path}: {key} is set both at the top level and under sandbox; "
                              "keep one")
        flat[key] = value
    return flat


def _read_file(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist; pass --config FILE") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({exc.problem or exc.context}); "
                          "check the indentation and the ':' after each key") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    return loaded


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key in _TOP_KEYS:
        if key in ("function_defaults", "limits", "gpu"):
            continue
        raw = env.get(f"FAASD_{key.upper()}")
        if raw is not None and raw != "":
            found[key] = raw
    return found


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
    checked: dict[str, object] = {}
    for key, raw in value.items():  # the same rules, and messages, as a function's faasd.yaml
        try:
            checked[key] = check_setting(key, raw)
        except ValueError as exc:
            raise ConfigError(f"{source}: function_defaults: {exc}") from None
    try:
        return merge_settings(FunctionSettings(), checked)
    except ValueError as exc:
        raise ConfigError(f"{source}: function_defaults: {exc}") from None


_LIMIT_KEYS = {f.name: f for f in fields(NodeLimits)}


def _limits(value: Any, source: str) -> NodeLimits:
    """The `limits:` mapping: whole numbers >= 0 (0 = what the node has), timeout_s > 0."""
    if isinstance(value, NodeLimits):
        return value
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: limits must be a mapping, e.g. limits: {{memory_mb: 4096}}")
    unknown = sorted(set(value) - set(_LIMIT_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown limits key(s) {', '.join(unknown)}; known: "
                          f"{', '.join(_LIMIT_KEYS)}")
    checked: dict[str, Any] = {}
    for key, raw in value.items():
        kind = float if key == "timeout_s" else int
        number = _convert(f"limits.{key}", raw, kind, source)
        if number < 0 or (key == "timeout_s" and number == 0):
            raise ConfigError(f"{source}: limits.{key} must be "
                              f"{'> 0' if key == 'timeout_s' else '>= 0 (0 = the node)'}, "
                              f"got {raw!r}")
        checked[key] = number
    return NodeLimits(**checked)


def _coerce(key: str, value: Any, source: str) -> Any:
    if key in ("allowed_hosts", "allowed_origins", "join", "etcd"):  # a list, or "a,b" (env)
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{source}: {key} must be a list of names, got {value!r}")
        return tuple(i.strip() for i in items if i.strip())
    if key in ("cluster_addr", "node_name"):  # text, or null for the default
        if value is None or isinstance(value, str):
            return value
        raise ConfigError(f"{source}: {key} must be text, got {value!r}")
    if key in ("state_dir", "functions_dir", "workflows_dir", "gossip_key_file"):
        if value is None or isinstance(value, str | Path):
            return None if value is None else Path(str(value)).expanduser()
        raise ConfigError(f"{source}: {key} must be a path, got {value!r}")
    default = _TOP_KEYS[key].default
    kind = type(default) if default is not dataclasses.MISSING else str
    return _convert(key, value, kind, source)


_KIND_NAMES = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}
_BOOL_TEXT = {"true": True, "yes": True, "on": True, "1": True,
              "false": False, "no": False, "off": False, "0": False}


def _convert(key: str, value: Any, kind: type, source: str) -> Any:
    """`value` as `kind`: a value of that type (an int for a float), or text that parses as
    one (what environment variables hold). Never a silent cut: 1.5 is not a whole number, and
    a float is finite."""
    converted: Any = None
    if kind is bool:
        converted = value if isinstance(value, bool) else (
            _BOOL_TEXT.get(value.strip().lower()) if isinstance(value, str) else None)
    elif isinstance(value, str) and kind is not str:
        with contextlib.suppress(ValueError):
            converted = kind(value.strip())
    elif isinstance(value, bool):  # YAML's true/false is no count and no text
        converted = None
    elif kind is float and isinstance(value, int | float):
        try:
            converted = float(value)
        except OverflowError:  # a whole number past float's range: as not finite
            converted = math.inf
    elif isinstance(value, kind):
        converted = value
    if converted is None:
        raise ConfigError(f"{source}: {key} must be {_KIND_NAMES[kind]}, got "
                          f"{clip(repr(value))}")
    if kind is float and not math.isfinite(converted):
        raise ConfigError(f"{source}: {key} must be a finite number, got {clip(repr(value))} "
                          "(.inf, nan and the like are not)")
    return converted
