"""A function's `faasd.yaml` -> FunctionSettings, merged over the daemon's defaults.

Every key is optional. A key is a FunctionSettings field, either at the top level or under
the section it belongs to:

    timeout_s: 30                 # per call, seconds
    batching:  {max_batch_size: 8, max_queue_delay_ms: 2}
    resources: {vcpu: 1, vgpu: 0, memory_mb: 1024, gpu_memory_mb: 0, max_pids: 64}
    scale:     {min_instances: 0, max_instances: 4, keep_alive_s: 300}
    slo_ms: 200
    env: {OMP_WAIT_POLICY: PASSIVE}
    max_image_pixels: 25000000    # an image body declaring more pixels is a 400
    network: false                # true: the sandbox may use the host's network
    idempotent: true              # false: no rerun of an async call a restart cut short (to it,
                                  # or to a workflow with it as a stage), no retry of
                                  # batch-mates after a sandbox death

Unknown keys, wrong types, out-of-range values and numbers that are not finite (YAML's `.inf`
and `.nan`) are DeployErrors that give the file, the
line, and the fix (the closest known key for a typo). Pure: text in, values out.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from esg.model import GPU_UNITS
from faasd.errors import DeployError, clip
from faasd.functions.spec import FunctionSettings

#: Sections of faasd.yaml and the FunctionSettings fields each holds.
SECTIONS: Mapping[str, tuple[str, ...]] = {
    "batching": ("max_batch_size", "max_queue_delay_ms"),
    "resources": ("vcpu", "vgpu", "memory_mb", "gpu_memory_mb", "max_pids"),
    "scale": ("min_instances", "max_instances", "keep_alive_s"),
}
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(FunctionSettings))
_SECTION_OF = {name: section for section, names in SECTIONS.items() for name in names}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: The settings that are true or false, and an example line's meaning for the error message.
_FLAGS = {
    "network": "true (the sandbox may use the host's network)",
    "idempotent": "false (an async call cut short by a restart fails instead of running again)",
}
#: The smallest memory limit a sandbox can start onnxruntime in.
MIN_MEMORY_MB = 64
#: The fewest processes and threads a sandbox can start in: its keeper, its PID namespace's
#: init, itself and a few threads of onnxruntime's.
MIN_PIDS = 8
#: The kernel's PID_MAX_LIMIT: a cgroup's pids.max takes nothing larger.
MAX_PIDS = 4_194_304
#: The largest number any setting takes (2**53: every whole number up to it is exact as a
#: float, and as a JSON number in any client); past it a value is a slip, not a setting.
MAX_NUMBER = 2**53


def _shown(value: object) -> str:
    """`value` as a message repeats it: its first 60 characters at most."""
    return clip(repr(value), 60)


class _LinedDict(dict[Any, Any]):
    """A YAML mapping that remembers the line each key is on."""

    lines: dict[Any, int]


class _Loader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LinedDict:
    mapping = _LinedDict()
    mapping.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in mapping:
            raise _YamlProblem(line, f"{key!r} is given twice; keep one")
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[key] = line
    return mapping


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _YamlProblem(Exception):
    def __init__(self, line: int, problem: str) -> None:
        super().__init__(problem)
        self.line = line
        self.problem = problem


@dataclass(frozen=True)
class _Rule:
    """What one numeric field accepts, and how to say so."""

    must_be: str
    example: str
    whole: bool = False
    minimum: float = 0.0
    above_minimum: bool = False
    maximum: float | None = None
    nullable: bool = False

    def accepts(self, value: object) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if abs(value) > MAX_NUMBER:
            return False
        if self.whole and not isinstance(value, int):
            return False
        if value < self.minimum or (self.above_minimum and value == self.minimum):
            return False
        return self.maximum is None or value <= self.maximum


_RULES: Mapping[str, _Rule] = {
    "timeout_s": _Rule("a positive number of seconds", "30", above_minimum=True),
    "max_batch_size": _Rule("a whole number >= 1 (1 turns batching off)", "8",
                            whole=True, minimum=1),
    "max_queue_delay_ms": _Rule("a number of milliseconds >= 0", "2"),
    "vcpu": _Rule("a whole number of CPU cores >= 1", "1", whole=True, minimum=1),
    "vgpu": _Rule(f"a whole number of GPU slice units from 0 (CPU only) to {GPU_UNITS}", "0",
                  whole=True, maximum=GPU_UNITS),
    "memory_mb": _Rule(f"a whole number of MiB >= {MIN_MEMORY_MB}", "1024",
                       whole=True, minimum=MIN_MEMORY_MB),
    "gpu_memory_mb": _Rule("a whole number of MiB of device memory >= 0 (0 = the slice's own)",
                           "2048", whole=True),
    "max_pids": _Rule(f"a whole number of processes and threads from {MIN_PIDS} to "
                      f"{MAX_PIDS}", "64", whole=True, minimum=MIN_PIDS, maximum=MAX_PIDS),
    "min_instances": _Rule("a whole number >= 0", "0", whole=True),
    "max_instances": _Rule("a whole number >= 1", "4", whole=True, minimum=1),
    "keep_alive_s": _Rule("a number of seconds >= 0", "300"),
    "slo_ms": _Rule("a positive number of milliseconds (or null for none)", "200",
                    above_minimum=True, nullable=True),
    "max_image_pixels": _Rule("a whole number of pixels >= 1", "25000000", whole=True,
                              minimum=1),
}


def _suggest(key: str, section: str | None) -> str:
    """The fix for an unknown key: the closest known key, or where a known key belongs."""
    if section is not None and key in _SECTION_OF:
        return f"; {key} belongs under {_SECTION_OF[key]}:"
    if section is not None and key in FIELDS:
        return f"; {key} is a top-level key, not part of {section}:"
    known = list(SECTIONS[section]) if section else [*FIELDS, *SECTIONS]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    if not close:
        # "timeout" -> "timeout_s": the unit suffix is the usual slip.
        close = [k for k in known if k.startswith(str(key))][:1]
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{hint} Known keys: {', '.join(known)}"


def _check_value(name: str, value: object, line: int) -> object:
    if name == "env":
        return _check_env(value, line)
    if name in _FLAGS:
        if not isinstance(value, bool):
            raise _YamlProblem(line, f"{name} must be true or false, got {_shown(value)}; "
                                     f"e.g. {name}: {_FLAGS[name]}")
        return value
    rule = _RULES[name]
    if isinstance(value, float) and not math.isfinite(value):
        raise _YamlProblem(
            line, f"{name} must be a finite number, {rule.must_be}; got {_shown(value)} (YAML's "
                  f".inf and .nan are not); e.g. {name}: {rule.example}")
    if isinstance(value, int | float) and not isinstance(value, bool) \
            and abs(value) > MAX_NUMBER:
        raise _YamlProblem(
            line, f"{name} must be {rule.must_be}, got {_shown(value)}, more than any setting "
                  f"takes (at most {MAX_NUMBER}); e.g. {name}: {rule.example}")
    if not rule.accepts(value):
        raise _YamlProblem(
            line, f"{name} must be {rule.must_be}, got {_shown(value)}; e.g. {name}: {rule.example}"
        )
    if isinstance(value, int) and not rule.whole:
        return float(value)  # exact: accepts() bounds it by MAX_NUMBER
    return value


def _check_env(value: object, line: int) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _YamlProblem(line, f"env must be a mapping NAME: value, got {_shown(value)}; "
                                 "e.g. env: {OMP_WAIT_POLICY: PASSIVE}")
    env: dict[str, str] = {}
    for key, item in value.items():
        item_line = value.lines.get(key, line) if isinstance(value, _LinedDict) else line
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise _YamlProblem(item_line, f"env name {key!r} is not a valid variable name "
                                          "(letters, digits, '_'; not starting with a digit)")
        if isinstance(item, dict | list) or item is None:
            raise _YamlProblem(item_line, f"env {key} must be a string or a number, got {item!r}")
        env[key] = str(item).lower() if isinstance(item, bool) else str(item)
    return env


def _collect(document: _LinedDict) -> dict[str, tuple[object, int]]:
    """faasd.yaml's mapping -> {field: (checked value, line)}, sections flattened."""
    found: dict[str, tuple[object, int]] = {}

    def put(name: str, value: object, line: int) -> None:
        if name in found:
            raise _YamlProblem(line, f"{name} is given twice (line {found[name][1]} and here); "
                                     "keep one")
        found[name] = (_check_value(name, value, line), line)

    for key, value in document.items():
        line = document.lines[key]
        if key in SECTIONS:
            for sub_key, (sub_value, sub_line) in _section(key, value, line).items():
                put(sub_key, sub_value, sub_line)
        elif key in FIELDS:
            put(key, value, line)
        else:
            raise _YamlProblem(line, f"unknown key {key!r}{_suggest(str(key), None)}")
    return found


def _section(section: str, value: object, line: int) -> dict[str, tuple[object, int]]:
    if not isinstance(value, _LinedDict):
        first = SECTIONS[section][0]
        raise _YamlProblem(line, f"{section} must be a mapping, e.g. "
                                 f"{section}: {{{first}: {_RULES[first].example}}}")
    for key in value:
        if key not in SECTIONS[section]:
            raise _YamlProblem(value.lines[key], f"unknown key {section}.{key}"
                                                 f"{_suggest(str(key), section)}")
    return {key: (item, value.lines[key]) for key, item in value.items()}


def parse_settings(text: str, file: str = "faasd.yaml") -> dict[str, tuple[object, int]]:
    """faasd.yaml text -> {FunctionSettings field: (value, line)}; DeployError with the line."""
    try:
        document = yaml.load(text, Loader=_Loader)  # a SafeLoader subclass
    except _YamlProblem as exc:
        raise DeployError(f"{file} line {exc.line}: {exc.problem}", file=file) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise DeployError(f"{file}{where}: not valid YAML ({exc.problem or exc.context}); "
                          "check the indentation and the ':' after each key", file=file) from exc
    except yaml.YAMLError as exc:
        raise DeployError(f"{file}: not valid YAML ({exc})", file=file) from exc
    if document is None:
        return {}
    if not isinstance(document, _LinedDict):
        raise DeployError(f"{file}: the top level must be a mapping of keys (e.g. timeout_s: 30), "
                          f"got {type(document).__name__}", file=file)
    try:
        return _collect(document)
    except _YamlProblem as exc:
        raise DeployError(f"{file} line {exc.line}: {exc.problem}", file=file) from exc


def check_setting(name: str, value: object) -> object:
    """One FunctionSettings field's value, checked as faasd.yaml checks it (the daemon's
    `function_defaults` use the same rules); ValueError with the fix."""
    if name not in FIELDS:
        raise ValueError(f"unknown setting {name!r}{_suggest(name, None)}")
    try:
        return _check_value(name, value, 0)
    except _YamlProblem as exc:
        raise ValueError(exc.problem) from None


def merge_settings(defaults: FunctionSettings, overrides: Mapping[str, object]) -> FunctionSettings:
    """`defaults` with `overrides` (field -> checked value) applied; min <= max checked."""
    settings = dataclasses.replace(defaults, **overrides)  # type: ignore[arg-type]
    if settings.min_instances > settings.max_instances:
        raise ValueError(
            f"min_instances ({settings.min_instances}) is larger than max_instances "
            f"({settings.max_instances}); raise scale.max_instances or lower scale.min_instances"
        )
    return settings
