"""Triton's `config.pbtxt`, the subset faasd honours, parsed without protobuf.

The text format (protobuf's "text format") is fields of three shapes: `name: scalar`,
`name { message }` (or `name: { message }`) and `name [ item, item ]` for repeated fields; a
repeated field may also simply appear again. Comments run from `#` to the end of the line;
`,` and `;` between fields are optional. `parse_text` reads any such text into nested
`Message`s; `parse_model_config` then picks out the fields faasd uses:

    name, platform / backend, default_model_filename, max_batch_size,
    input / output { name, data_type, dims }, dynamic_batching
    { max_queue_delay_microseconds, preferred_batch_size }, instance_group [{ count, kind }]

Every other field is ignored with a note (so the same directory stays valid for Triton).
Malformed text is a `DeployError` that names the file and the line.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

from faasd.errors import DeployError
from faasd.functions.spec import TensorSpec

Scalar: TypeAlias = str | int | float | bool
Value: TypeAlias = "Scalar | Message"

#: Triton's model platforms and backends that mean "an ONNX model run by onnxruntime".
ONNX_PLATFORMS = frozenset({"onnxruntime_onnx"})
ONNX_BACKENDS = frozenset({"onnxruntime"})

#: Triton `DataType` enum names -> Open Inference Protocol datatypes.
TRITON_TO_V2 = {
    "TYPE_BOOL": "BOOL",
    "TYPE_UINT8": "UINT8",
    "TYPE_UINT16": "UINT16",
    "TYPE_UINT32": "UINT32",
    "TYPE_UINT64": "UINT64",
    "TYPE_INT8": "INT8",
    "TYPE_INT16": "INT16",
    "TYPE_INT32": "INT32",
    "TYPE_INT64": "INT64",
    "TYPE_FP16": "FP16",
    "TYPE_FP32": "FP32",
    "TYPE_FP64": "FP64",
    "TYPE_STRING": "BYTES",
}


@dataclass
class Message:
    """One `{ ... }` block: each field name -> its values in order, with their line numbers."""

    line: int
    fields: dict[str, list[tuple[Value, int]]] = field(default_factory=dict)

    def add(self, name: str, value: Value, line: int) -> None:
        self.fields.setdefault(name, []).append((value, line))


@dataclass(frozen=True)
class ModelConfig:
    """What faasd takes from a config.pbtxt. None means the field was absent."""

    name: str | None = None
    platform: str | None = None
    backend: str | None = None
    default_model_filename: str | None = None
    max_batch_size: int | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    dynamic_batching: bool = False
    max_queue_delay_us: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    instance_count: int | None = None
    instance_kinds: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def settings_overrides(self) -> dict[str, object]:
        """The FunctionSettings fields this config sets, by field name.

        `max_batch_size: 0` (the model does not batch) becomes faasd's 1 (no batching); the
        instance count summed over `instance_group` becomes `max_instances`.
        """
        overrides: dict[str, object] = {}
        if self.max_batch_size is not None:
            overrides["max_batch_size"] = max(1, self.max_batch_size)
        if self.max_queue_delay_us is not None:
            overrides["max_queue_delay_ms"] = self.max_queue_delay_us / 1000.0
        if self.instance_count is not None:
            overrides["max_instances"] = self.instance_count
        return overrides


# --- tokens --------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?(?![\w.]))
  | (?P<ident>[A-Za-z_][\w.]*)
  | (?P<punct>[{}\[\]:,;<>])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str
    line: int


def _tokens(text: str, file: str) -> Iterator[_Token]:
    line, pos = 1, 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise DeployError(
                f"{file} line {line}: unexpected character {text[pos]!r}; "
                "config.pbtxt is protobuf text format (name: value, name { ... })",
                file=file,
            )
        kind = match.lastgroup or ""
        if kind == "newline":
            line += 1
        elif kind not in ("space", "comment"):
            yield _Token(kind, match.group(), line)
        pos = match.end()
    yield _Token("end", "", line)


# --- parser --------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, file: str) -> None:
        self._tokens = list(_tokens(text, file))
        self._at = 0
        self._file = file

    def _peek(self) -> _Token:
        return self._tokens[self._at]

    def _next(self) -> _Token:
        token = self._tokens[self._at]
        self._at += 1
        return token

    def _fail(self, token: _Token, expected: str) -> DeployError:
        found = "the end of the file" if token.kind == "end" else repr(token.text)
        return DeployError(
            f"{self._file} line {token.line}: expected {expected}, found {found}", file=self._file
        )

    def message(self, closing: str | None, line: int) -> Message:
        """Fields up to `closing` ('}' or '>'), or to the end of the text when None."""
        message = Message(line)
        while True:
            token = self._peek()
            if closing is None and token.kind == "end":
                return message
            if closing is not None and token.text == closing and token.kind == "punct":
                self._next()
                return message
            if token.kind != "ident":
                want = "a field name" if closing is None else f"a field name or {closing!r}"
                raise self._fail(token, want)
            self._next()
            self._field(message, token)
            if self._peek().text in (",", ";") and self._peek().kind == "punct":
                self._next()

    def _field(self, message: Message, name: _Token) -> None:
        colon = self._peek().kind == "punct" and self._peek().text == ":"
        if colon:
            self._next()
        token = self._peek()
        if token.kind == "punct" and token.text == "[":
            self._next()
            self._list(message, name.text)
        elif token.kind == "punct" and token.text in "{<":
            self._next()
            message.add(name.text, self.message("}" if token.text == "{" else ">", token.line),
                        name.line)
        elif colon:
            message.add(name.text, self._scalar(), name.line)
        else:
            raise self._fail(token, f"':' or '{{' after {name.text!r}")

    def _list(self, message: Message, name: str) -> None:
        if self._peek().text == "]" and self._peek().kind == "punct":
            self._next()
            message.fields.setdefault(name, [])
            return
        while True:
            token = self._peek()
            if token.kind == "punct" and token.text in "{<":
                self._next()
                value: Value = self.message("}" if token.text == "{" else ">", token.line)
            else:
                value = self._scalar()
            message.add(name, value, token.line)
            separator = self._next()
            if separator.kind == "punct" and separator.text == "]":
                return
            if separator.kind != "punct" or separator.text != ",":
                raise self._fail(separator, "',' or ']'")

    def _scalar(self) -> Scalar:
        token = self._next()
        if token.kind == "string":
            return _unquote(token.text)
        if token.kind == "number":
            text = token.text.rstrip("fF")
            is_float = any(c in text for c in ".eE") or token.text[-1] in "fF"
            return float(text) if is_float else int(text)
        if token.kind == "ident":
            if token.text in ("true", "True"):
                return True
            if token.text in ("false", "False"):
                return False
            return token.text
        raise self._fail(token, "a value (a number, a \"string\" or an ENUM_NAME)")


def _unquote(quoted: str) -> str:
    body = quoted[1:-1]
    return body.encode("latin-1", "backslashreplace").decode("unicode_escape")


def parse_text(text: str, file: str = "config.pbtxt") -> Message:
    """Protobuf text format -> a tree of Messages. Raises DeployError with the line."""
    return _Parser(text, file).message(None, 1)


# --- the fields faasd honours ---------------------------------------------------------------


class _Reader:
    """Typed access to a Message's fields, collecting notes about the ones faasd does not use."""

    def __init__(self, file: str, notes: list[str]) -> None:
        self.file = file
        self.notes = notes

    def fail(self, line: int, problem: str) -> DeployError:
        return DeployError(f"{self.file} line {line}: {problem}", file=self.file)

    def _one(self, message: Message, name: str) -> tuple[Value, int] | None:
        values = message.fields.get(name)
        if not values:
            return None
        if len(values) > 1:
            raise self.fail(values[1][1], f"{name!r} is given more than once; keep one")
        return values[0]

    def int_(self, message: Message, name: str, minimum: int, hint: str = "") -> int | None:
        found = self._one(message, name)
        if found is None:
            return None
        value, line = found
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(line, f"{name} must be a whole number, got {value!r}")
        if value < minimum:
            raise self.fail(line, f"{name} must be >= {minimum}{hint}, got {value}")
        return value

    def str_(self, message: Message, name: str) -> tuple[str, int] | None:
        found = self._one(message, name)
        if found is None:
            return None
        value, line = found
        if not isinstance(value, str):
            raise self.fail(line, f"{name} must be a string or an ENUM_NAME, got {value!r}")
        return value, line

    def message(self, message: Message, name: str) -> Message | None:
        found = self._one(message, name)
        if found is None:
            return None
        value, line = found
        if not isinstance(value, Message):
            raise self.fail(line, f"{name} must be a {{ ... }} block, got {value!r}")
        return value

    def many(self, message: Message, name: str) -> list[tuple[Value, int]]:
        return message.fields.get(name, [])

    def note_unknown(self, message: Message, known: set[str], where: str) -> None:
        for name, values in message.fields.items():
            if name not in known:
                line = values[0][1] if values else message.line
                self.notes.append(
                    f"{self.file} line {line}: {where}{name!r} is not used by faasd (ignored)"
                )


def _tensor(reader: _Reader, block: Value, line: int, batch_dim: bool) -> TensorSpec:
    if not isinstance(block, Message):
        raise reader.fail(
            line, "input/output entries must be { name: ..., data_type: ..., dims: [...] } blocks"
        )
    name = reader.str_(block, "name")
    if name is None:
        raise reader.fail(line, 'an input/output needs a name, e.g. name: "input0"')
    data_type = reader.str_(block, "data_type")
    if data_type is None:
        raise reader.fail(line, f"tensor {name[0]!r} needs a data_type, e.g. TYPE_FP32")
    datatype = TRITON_TO_V2.get(data_type[0])
    if datatype is None:
        raise reader.fail(
            data_type[1],
            f"data_type {data_type[0]} is not supported; use one of {', '.join(TRITON_TO_V2)}",
        )
    dims: list[int] = []
    for dim, dim_line in reader.many(block, "dims"):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < -1 or dim == 0:
            raise reader.fail(dim_line, f"dims must be positive whole numbers or -1, got {dim!r}")
        dims.append(dim)
    reader.note_unknown(block, {"name", "data_type", "dims"}, f"tensor {name[0]!r}: ")
    shape = ((-1,) if batch_dim else ()) + tuple(dims)
    return TensorSpec(name=name[0], datatype=datatype, shape=shape)


def _dynamic_batching(reader: _Reader, block: Message) -> tuple[int | None, tuple[int, ...]]:
    delay_us = reader.int_(block, "max_queue_delay_microseconds", 0)
    preferred: list[int] = []
    for size, line in reader.many(block, "preferred_batch_size"):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise reader.fail(line, f"preferred_batch_size must be >= 1, got {size!r}")
        preferred.append(size)
    if preferred:
        reader.notes.append(
            f"{reader.file}: preferred_batch_size is not used; faasd batches up to "
            "max_batch_size within max_queue_delay"
        )
    reader.note_unknown(
        block, {"max_queue_delay_microseconds", "preferred_batch_size"}, "dynamic_batching: "
    )
    return delay_us, tuple(preferred)


def _instance_groups(reader: _Reader, root: Message) -> tuple[int | None, tuple[str, ...]]:
    groups = reader.many(root, "instance_group")
    if not groups:
        return None, ()
    total, kinds = 0, []
    for group, line in groups:
        if not isinstance(group, Message):
            raise reader.fail(line, "instance_group entries must be { count: N, kind: ... }")
        count = reader.int_(group, "count", 1)
        total += 1 if count is None else count
        kind = reader.str_(group, "kind")
        kinds.append("KIND_AUTO" if kind is None else kind[0])
        reader.note_unknown(group, {"count", "kind"}, "instance_group: ")
    return total, tuple(kinds)


_TOP_LEVEL = {
    "name", "platform", "backend", "default_model_filename", "max_batch_size",
    "input", "output", "dynamic_batching", "instance_group",
}


def _check_onnx(reader: _Reader, platform: tuple[str, int] | None,
                backend: tuple[str, int] | None) -> None:
    if platform is not None and platform[0] not in ONNX_PLATFORMS:
        raise reader.fail(platform[1], f"faasd runs ONNX models only: platform {platform[0]!r} "
                                       'is not supported; use platform: "onnxruntime_onnx"')
    if backend is not None and backend[0] not in ONNX_BACKENDS:
        raise reader.fail(backend[1], f"faasd runs ONNX models only: backend {backend[0]!r} "
                                      'is not supported; use backend: "onnxruntime"')


def parse_model_config(text: str, file: str = "config.pbtxt") -> ModelConfig:
    """Read the fields faasd honours; note the rest. Raises DeployError naming file and line."""
    root = parse_text(text, file)
    notes: list[str] = []
    reader = _Reader(file, notes)
    name = reader.str_(root, "name")
    platform = reader.str_(root, "platform")
    backend = reader.str_(root, "backend")
    _check_onnx(reader, platform, backend)
    filename = reader.str_(root, "default_model_filename")
    max_batch = reader.int_(root, "max_batch_size", 0, " (0 = the model does not batch)")
    inputs = tuple(_tensor(reader, v, ln, bool(max_batch)) for v, ln in reader.many(root, "input"))
    outputs = tuple(
        _tensor(reader, v, ln, bool(max_batch)) for v, ln in reader.many(root, "output")
    )
    dynamic = reader.message(root, "dynamic_batching")
    delay_us, preferred = (None, ()) if dynamic is None else _dynamic_batching(reader, dynamic)
    count, kinds = _instance_groups(reader, root)
    if any(kind == "KIND_GPU" for kind in kinds):
        notes.append(f"{file}: instance_group kind KIND_GPU is not used; give the function GPU "
                     "slices with resources: {vgpu: N} in faasd.yaml")
    reader.note_unknown(root, _TOP_LEVEL, "")
    return ModelConfig(
        name=None if name is None else name[0],
        platform=None if platform is None else platform[0],
        backend=None if backend is None else backend[0],
        default_model_filename=None if filename is None else filename[0],
        max_batch_size=max_batch,
        inputs=inputs,
        outputs=outputs,
        dynamic_batching=dynamic is not None,
        max_queue_delay_us=delay_us,
        preferred_batch_sizes=preferred,
        instance_count=count,
        instance_kinds=kinds,
        notes=tuple(notes),
    )


def load_model_config(path: Path) -> ModelConfig:
    """Parse the config.pbtxt at `path` (DeployError if it is not UTF-8 text)."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DeployError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                          "config.pbtxt must be protobuf text format", file=str(path)) from exc
    return parse_model_config(text, str(path))
