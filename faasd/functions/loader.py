"""A function directory -> a validated `FunctionSource`, or a DeployError that says the fix.

The directory (DESIGN.md "Function"; Triton's model repository layout is accepted as is):

    model.onnx            or <version>/model.onnx (the highest numeric version is served)
    config.pbtxt          optional, Triton's text format (faasd.functions.pbtxt)
    faasd.yaml            optional, settings (faasd.functions.settings)
    handler.py            optional, preprocess(body, content_type) / postprocess(outputs)
    labels.txt            optional, one output label per line
    sample.json, sample.png / .jpg / .jpeg   optional sample requests

Checks here are static and cheap: nothing is loaded and nothing is imported, and nothing is
read before `faasd.functions.tree` has refused links out of the directory and special files.
Loading the model and importing the handler happen in a throwaway sandbox
(`SandboxPool.inspect`), never in the daemon's process. Settings come from the daemon's
defaults, then config.pbtxt, then faasd.yaml; a setting that config.pbtxt and faasd.yaml
give different values is an error.
"""

from __future__ import annotations

import ast
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from faasd.errors import DeployError, clip
from faasd.functions.pbtxt import ModelConfig, load_model_config
from faasd.functions.settings import merge_settings, parse_settings
from faasd.functions.spec import NAME_PATTERN, FunctionSettings, TensorSpec
from faasd.functions.tree import check_tree

log = logging.getLogger("faasd.functions")

MODEL_FILE = "model.onnx"
SETTINGS_FILE = "faasd.yaml"
PBTXT_FILE = "config.pbtxt"
HANDLER_FILE = "handler.py"
LABELS_FILE = "labels.txt"
SAMPLE_FILES = ("sample.json", "sample.png", "sample.jpg", "sample.jpeg")
#: First bytes of a serialized ONNX ModelProto: the tag of one of its fields (ir_version = 1,
#: producer_name = 2, ..., graph = 7, opset_import = 8, metadata_props = 14).
_MODEL_PROTO_TAGS = frozenset({0x08, 0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72})
#: Triton version directories: numeric, not starting with 0.
_VERSION_DIR = re.compile(r"^[1-9][0-9]*$")


@dataclass(frozen=True)
class FunctionSource:
    """A function directory that passed the static checks. Paths are inside `directory`.

    `declared_inputs`/`declared_outputs` come from config.pbtxt (empty without one); the
    model's real tensors are known only after `SandboxPool.inspect`. `notes` are things worth
    telling the user that do not stop the deploy (ignored config.pbtxt fields, ...).
    """

    name: str
    directory: Path
    model_path: Path
    settings: FunctionSettings
    handler_path: Path | None = None
    labels_path: Path | None = None
    sample_paths: tuple[Path, ...] = ()
    declared_inputs: tuple[TensorSpec, ...] = ()
    declared_outputs: tuple[TensorSpec, ...] = ()
    notes: tuple[str, ...] = ()


def suggest_name(raw: str) -> str:
    """A valid function name close to `raw` ("My_Model" -> "my-model"), or "" if none."""
    name = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[:63].strip("-")
    return name if NAME_PATTERN.match(name) else ""


def check_name(name: str, file: str | None, source: str) -> None:
    """DeployError unless `name` matches NAME_PATTERN; `source` says where the name came from."""
    if NAME_PATTERN.match(name):
        return
    better = suggest_name(name)
    example = f", e.g. {better!r}" if better else ""
    fix = (f"choose another --name{example}" if source == "--name"
           else f"rename it or deploy with --name{example}")
    raise DeployError(
        f"bad function name {clip(name)!r} (from {source}): use lowercase letters, digits and '-', "
        f"starting and ending with a letter or digit, at most 63 characters "
        f"(pattern {NAME_PATTERN.pattern}); {fix}",
        file=file,
    )


def _find_model(directory: Path, filename: str) -> Path:
    """`<dir>/model.onnx`, else the highest `<dir>/<N>/model.onnx`; DeployError if neither."""
    top = directory / filename
    versions = sorted(
        (int(p.name), p / filename)
        for p in directory.iterdir()
        if p.is_dir() and _VERSION_DIR.match(p.name) and (p / filename).exists()
    )
    if top.exists() and versions:
        raise DeployError(
            f"{directory} has both {filename} and {versions[-1][0]}/{filename}: keep one "
            f"(the top-level {filename}, or Triton's <version>/{filename} layout)",
            file=str(top),
        )
    if top.exists():
        return top
    if versions:
        return versions[-1][1]
    raise DeployError(
        f"no model in {directory}: looked for {top} and {directory}/<version>/{filename} "
        f"(e.g. 1/{filename}); put the ONNX model at {top}",
        file=str(top),
    )


def check_model_file(path: Path) -> None:
    """Cheap sanity checks; the real load happens in a sandbox. DeployError names the fix."""
    if not path.is_file():
        raise DeployError(f"{path} is not a file; the model must be a single ONNX file",
                          file=str(path))
    size = path.stat().st_size
    if size == 0:
        raise DeployError(f"{path} is empty (0 bytes); export or build the model again",
                          file=str(path))
    with path.open("rb") as stream:
        head = stream.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise DeployError(f"{path} is a Git LFS pointer, not the model; run `git lfs pull`",
                          file=str(path))
    if head[0] not in _MODEL_PROTO_TAGS:
        raise DeployError(
            f"{path} is not an ONNX model (its first bytes, {head[:8]!r}, cannot start a "
            "protobuf ModelProto); export the model with torch.onnx.export, tf2onnx or onnx.save",
            file=str(path),
        )


def _check_handler(path: Path) -> None:
    """Parse (never import) handler.py: a syntax error, or neither hook defined, is an error."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
    except UnicodeDecodeError as exc:
        raise DeployError(f"{path} is not UTF-8 text: {exc.reason}", file=str(path)) from exc
    except SyntaxError as exc:
        raise DeployError(f"{path} line {exc.lineno}: syntax error: {exc.msg}; fix the handler",
                          file=str(path)) from exc
    hooks = {"preprocess": 2, "postprocess": 1}
    defined: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
            return  # `from x import *` may bring the hooks; the sandbox will tell
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in hooks:
            defined[node.name] = node
        elif isinstance(node, ast.Assign | ast.ImportFrom | ast.Import):
            targets = _bound_names(node)
            defined.update({name: node for name in targets if name in hooks})
    if not defined:
        raise DeployError(
            f"{path} defines neither preprocess(body, content_type) nor postprocess(outputs); "
            "define at least one, or delete handler.py",
            file=str(path),
        )
    for name, hook in defined.items():
        if isinstance(hook, ast.AsyncFunctionDef):
            raise DeployError(f"{path} line {hook.lineno}: {name} must be a plain function, "
                              "not async def", file=str(path))
        if isinstance(hook, ast.FunctionDef) and not _takes(hook, hooks[name]):
            want = "(body, content_type)" if name == "preprocess" else "(outputs)"
            raise DeployError(f"{path} line {hook.lineno}: {name} must take {want}",
                              file=str(path))


def _bound_names(node: ast.Assign | ast.ImportFrom | ast.Import) -> list[str]:
    if isinstance(node, ast.Assign):
        return [t.id for t in node.targets if isinstance(t, ast.Name)]
    return [alias.asname or alias.name.split(".")[0] for alias in node.names]


def _takes(function: ast.FunctionDef, count: int) -> bool:
    """Whether `function` can be called with `count` positional arguments."""
    arguments = function.args
    positional = len(arguments.posonlyargs) + len(arguments.args)
    required = positional - len(arguments.defaults)
    required_kwonly = sum(d is None for d in arguments.kw_defaults)
    if required_kwonly:
        return False
    return required <= count and (positional >= count or arguments.vararg is not None)


def _check_text(path: Path) -> None:
    try:
        path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DeployError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}",
                          file=str(path)) from exc


def _check_sample_json(path: Path) -> None:
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise DeployError(f"{path} is not UTF-8 text", file=str(path)) from exc
    except json.JSONDecodeError as exc:
        raise DeployError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}); fix or "
                          "delete the sample", file=str(path)) from exc


def _settings(directory: Path, defaults: FunctionSettings,
              config: ModelConfig | None) -> FunctionSettings:
    """defaults <- config.pbtxt <- faasd.yaml, a contradiction between the two files an error."""
    overrides: dict[str, object] = dict(config.settings_overrides()) if config else {}
    yaml_path = directory / SETTINGS_FILE
    misnamed = directory / "faasd.yml"
    if misnamed.exists() and not yaml_path.exists():
        raise DeployError(f"{misnamed}: faasd reads settings from {SETTINGS_FILE}; rename the "
                          "file so that they are not silently ignored", file=str(misnamed))
    if yaml_path.exists():
        try:
            text = yaml_path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DeployError(f"{yaml_path} is not UTF-8 text", file=str(yaml_path)) from exc
        for name, (value, line) in parse_settings(text, str(yaml_path)).items():
            if name in overrides and overrides[name] != value:
                raise DeployError(
                    f"{yaml_path} line {line}: {name} is {value!r} here but "
                    f"{overrides[name]!r} in {directory / PBTXT_FILE}; "
                    f"give it in one file (config.pbtxt wins for Triton), or make them agree",
                    file=str(yaml_path),
                )
            overrides[name] = value
    try:
        return merge_settings(defaults, overrides)
    except ValueError as exc:
        raise DeployError(f"{yaml_path}: {exc}", file=str(yaml_path)) from exc


def _resolve_name(directory: Path, name: str | None, config: ModelConfig | None,
                  notes: list[str]) -> str:
    pbtxt = str(directory / PBTXT_FILE)
    if name is not None:
        check_name(name, None, "--name")
        if config and config.name and config.name != name:
            notes.append(f"{pbtxt} names the model {config.name!r}; deployed as {name!r}")
        return name
    if config and config.name:
        check_name(config.name, pbtxt, f"the name field of {pbtxt}")
        if config.name != directory.name:
            notes.append(f"{pbtxt} names the model {config.name!r}, the directory is "
                         f"{directory.name!r}; deployed as {config.name!r}")
        return config.name
    check_name(directory.name, str(directory), f"the directory name of {directory}")
    return directory.name


def load_function(directory: Path, defaults: FunctionSettings,
                  name: str | None = None) -> FunctionSource:
    """Validate the function directory statically; DeployError(file=...) says what to fix.

    The name is `name` if given, else config.pbtxt's `name`, else the directory's name.
    """
    directory = directory.resolve()
    if not directory.is_dir():
        raise DeployError(f"{directory} is not a directory; deploy a function directory "
                          f"that holds {MODEL_FILE}", file=str(directory))
    check_tree(directory)  # before any file in it is opened
    notes: list[str] = []
    pbtxt_path = directory / PBTXT_FILE
    config = load_model_config(pbtxt_path) if pbtxt_path.exists() else None
    if config is not None:
        notes.extend(config.notes)
    resolved = _resolve_name(directory, name, config, notes)
    model_path = _find_model(directory, (config and config.default_model_filename) or MODEL_FILE)
    check_model_file(model_path)
    settings = _settings(directory, defaults, config)
    handler = directory / HANDLER_FILE
    if handler.exists():
        _check_handler(handler)
    labels = directory / LABELS_FILE
    if labels.exists():
        _check_text(labels)
    samples = tuple(directory / s for s in SAMPLE_FILES if (directory / s).is_file())
    if directory / "sample.json" in samples:
        _check_sample_json(directory / "sample.json")
    for note in notes:
        log.info("%s: %s", resolved, note)
    return FunctionSource(
        name=resolved,
        directory=directory,
        model_path=model_path,
        settings=settings,
        handler_path=handler if handler.exists() else None,
        labels_path=labels if labels.exists() else None,
        sample_paths=samples,
        declared_inputs=config.inputs if config else (),
        declared_outputs=config.outputs if config else (),
        notes=tuple(notes),
    )
