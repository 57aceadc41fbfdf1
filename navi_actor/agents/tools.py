"""Tools an LLM agent may call: the :class:`Tool` type, a :class:`Tools` registry,
the :func:`tool` decorator, and three built-ins that are safe to run.

A tool is a Python function with a name, a description and a JSON-schema
``parameters`` dict (what the model is shown). The model's arguments are passed
as keyword arguments; a function that declares a keyword-only parameter named
``turn`` also receives the :class:`~navi_actor.turn.Turn` (for ``upload_dir``,
``session_id``, ``stop_event``). A plain function runs in a worker thread so a
slow one does not hold up the stream; an ``async def`` runs on the loop.

Return a string or anything JSON-able. Raise :class:`ToolError` with a message
meant for the model (and the user) when the call cannot be done; any other
exception is reported as ``"TypeName: message"``. Either way the model is told
and the turn goes on.

Register your own::

    # mytools.py — run with NAVI_OPENAI_TOOLS=mytools:tools
    from navi_actor.agents.tools import Tools

    tools = Tools()

    @tools.tool(parameters={
        "type": "object",
        "properties": {"city": {"type": "string", "description": "a city name"}},
        "required": ["city"],
    })
    def weather(city: str) -> str:
        \"\"\"Today's weather in a city.\"\"\"
        return f"It is sunny in {city}."

The built-ins: ``calculator`` (arithmetic, parsed with :mod:`ast` and never
``eval``-ed), ``current_time`` (UTC, ISO 8601) and ``read_upload`` (a text file
from the session's upload folder, and nothing outside it).
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import datetime as dt
import inspect
import json
import math
import operator
import os
import re
import stat
from pathlib import PurePosixPath
from typing import Any, Callable, Iterable, Iterator

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what the OpenAI API accepts as a function name
NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


class ToolError(Exception):
    """A tool cannot do what was asked; the message is shown to the model as it is."""


@dataclasses.dataclass(frozen=True, slots=True)
class Tool:
    """One callable tool and what the model is told about it."""

    name: str
    description: str
    parameters: dict[str, Any]
    func: Callable[..., Any]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        if not isinstance(self.parameters, dict) or self.parameters.get("type") != "object":
            raise ValueError(f"tool {self.name}: parameters must be a JSON-schema dict with \"type\": \"object\"")
        if not callable(self.func):
            raise ValueError(f"tool {self.name}: {self.func!r} is not callable")

    @property
    def wants_turn(self) -> bool:
        """True when the function declares a ``turn`` parameter."""
        try:
            return "turn" in inspect.signature(self.func).parameters
        except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
            return False

    def spec(self) -> dict[str, Any]:
        """The entry of the request's ``tools`` list (OpenAI function-tool format)."""
        return {
            "type": "function",
            "function": {"name": self.name, "description": self.description, "parameters": self.parameters},
        }

    async def run(self, arguments: dict[str, Any], turn: Any = None) -> Any:
        """Call the function with the model's arguments; exceptions propagate."""
        kwargs = dict(arguments)
        if self.wants_turn:
            kwargs["turn"] = turn
        if inspect.iscoroutinefunction(self.func):
            return await self.func(**kwargs)
        result = await asyncio.to_thread(self.func, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)


def _describe(func: Callable[..., Any]) -> str:
    doc = inspect.getdoc(func) or ""
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def tool(
    name: str | None = None, *, description: str | None = None, parameters: dict[str, Any] | None = None
) -> Callable[[Callable[..., Any]], Tool]:
    """Decorator: make a :class:`Tool` of a function (name and description default
    to the function's name and its docstring's first paragraph)."""

    def make(func: Callable[..., Any]) -> Tool:
        return Tool(
            name=name or func.__name__,
            description=description if description is not None else _describe(func),
            parameters=parameters if parameters is not None else dict(NO_PARAMETERS),
            func=func,
        )

    return make


class Tools:
    """A registry of tools by name (names are unique)."""

    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool) -> Tool:
        if not isinstance(t, Tool):
            raise TypeError(f"{t!r} is not a Tool; make one with the @tool decorator")
        if t.name in self._tools:
            raise ValueError(f"a tool named {t.name!r} is registered twice")
        self._tools[t.name] = t
        return t

    def tool(
        self, name: str | None = None, *, description: str | None = None, parameters: dict[str, Any] | None = None
    ) -> Callable[[Callable[..., Any]], Tool]:
        """Decorator: like :func:`tool`, and register the result here."""

        def register(func: Callable[..., Any]) -> Tool:
            return self.add(tool(name, description=description, parameters=parameters)(func))

        return register

    def extend(self, tools: Iterable[Tool]) -> None:
        for t in tools:
            self.add(t)

    def get(self, name: str) -> Tool | None:
        return self._tools.get(name)

    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        return [t.spec() for t in self._tools.values()]

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def __iter__(self) -> Iterator[Tool]:
        return iter(list(self._tools.values()))

    def __len__(self) -> int:
        return len(self._tools)


def as_tools(obj: Any, where: str = "") -> list[Tool]:
    """The tools in ``obj``: a :class:`Tools`, a :class:`Tool`, or an iterable of them."""
    if isinstance(obj, Tool):
        return [obj]
    if isinstance(obj, Tools):
        return list(obj)
    if isinstance(obj, (list, tuple)):
        out = []
        for item in obj:
            if not isinstance(item, Tool):
                raise TypeError(f"{where or 'the list'} holds {item!r}, which is not a Tool")
            out.append(item)
        return out
    raise TypeError(
        f"{where or repr(obj)} is {type(obj).__name__}: expected a Tools registry, a Tool or a list of Tools"
    )


def result_text(result: Any) -> str:
    """A tool result as the text sent back to the model."""
    if isinstance(result, str):
        return result
    try:
        return json.dumps(result, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(result)


# ── calculator ───────────────────────────────────────────────────────────────

MAX_EXPRESSION_CHARS = 1000
MAX_INT_BITS = 10_000  # about 3000 digits: big enough for arithmetic, small enough to be instant

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitXor: operator.pow,  # people write 2^10 for a power; a calculator has no xor
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}


def _factorial(n: Any) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0 or n > 1000:
        raise ToolError("factorial needs a whole number from 0 to 1000")
    return math.factorial(n)


_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "min": min, "max": max,
    "sqrt": math.sqrt, "exp": math.exp, "log": math.log, "log10": math.log10, "log2": math.log2,
    "sin": math.sin, "cos": math.cos, "tan": math.tan, "asin": math.asin, "acos": math.acos,
    "atan": math.atan, "floor": math.floor, "ceil": math.ceil, "factorial": _factorial,
}


def _bits(x: Any) -> int:
    return x.bit_length() if isinstance(x, int) else 0


def _check(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ToolError(f"the result {value!r} is not a number")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("the result is too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is too large (not a finite number)")
    return value


MAX_DEPTH = 100


def _eval(node: ast.AST, depth: int = 0) -> Any:
    if depth > MAX_DEPTH:
        raise ToolError("the expression is nested too deeply")
    depth += 1
    if isinstance(node, ast.Expression):
        return _eval(node.body, depth)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise ToolError(f"{node.value!r} is not a number")
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _check(_UNARY[type(node.op)](_eval(node.operand, depth)))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left, depth), _eval(node.right, depth)
        op = type(node.op)
        if op in (ast.Pow, ast.BitXor):
            if isinstance(left, int) and isinstance(right, int) and right > 0:
                if max(_bits(left), 1) * right > MAX_INT_BITS and abs(left) > 1:
                    raise ToolError("the result is too large")
            elif abs(right) > 10_000 and abs(left) not in (0, 1):
                raise ToolError("the exponent is too large")
        elif op is ast.Mult and _bits(left) + _bits(right) > MAX_INT_BITS:
            raise ToolError("the result is too large")
        try:
            value = _BINARY[op](left, right)
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large") from None
        if isinstance(value, complex):
            raise ToolError("the result is not a real number")
        return _check(value)
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        raise ToolError(f"unknown name {node.id!r}; the constants are {', '.join(_CONSTANTS)}")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
            shown = node.func.id if isinstance(node.func, ast.Name) else ast.unparse(node.func)
            raise ToolError(f"unknown function {shown!r}; the functions are {', '.join(_FUNCTIONS)}")
        if node.keywords:
            raise ToolError("functions take plain arguments, not name=value")
        args = [_eval(a, depth) for a in node.args]
        try:
            return _check(_FUNCTIONS[node.func.id](*args))
        except ToolError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:
            raise ToolError(f"{node.func.id}: {exc}") from None
    raise ToolError(f"{ast.unparse(node)!r} is not arithmetic; use numbers, + - * / // % ** ( ) and functions")


def evaluate(expression: str) -> int | float:
    """Evaluate an arithmetic expression safely (no names but pi/e/tau, no attribute
    access, no eval); raise :class:`ToolError` saying what is wrong."""
    if not isinstance(expression, str) or not expression.strip():
        raise ToolError("give an arithmetic expression, e.g. \"(2 + 3) * 4\"")
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"cannot parse {expression!r}: {exc.msg}") from None
    try:
        return _eval(tree)
    except RecursionError:  # pragma: no cover - MAX_DEPTH comes first
        raise ToolError("the expression is nested too deeply") from None


def format_number(value: int | float) -> str:
    """An int as is; a float with up to 15 significant digits (0.1 + 0.2 → 0.3)."""
    if isinstance(value, int):
        return str(value)
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return f"{value:.15g}"


@tool(
    parameters={
        "type": "object",
        "properties": {
            "expression": {
                "type": "string",
                "description": "e.g. \"(2 + 3) * 4 / 7\" or \"sqrt(2) ** 3\"; operators + - * / // % ** "
                "and functions sqrt, exp, log, log10, log2, sin, cos, tan, floor, ceil, abs, round, "
                "min, max, factorial; constants pi, e, tau",
            }
        },
        "required": ["expression"],
    }
)
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly; use it for any arithmetic instead of doing it in your head."""
    return format_number(evaluate(expression))


# ── current_time ─────────────────────────────────────────────────────────────


@tool()
def current_time() -> str:
    """The current date and time in UTC (ISO 8601)."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ── read_upload ──────────────────────────────────────────────────────────────

MAX_UPLOAD_READ = 64 * 1024


def _listing(root: str, limit: int = 50) -> list[str]:
    names: list[str] = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            names.append(os.path.relpath(os.path.join(folder, f), root))
            if len(names) >= limit:
                return names
    return names


def read_upload_file(upload_dir: str, name: str, limit: int = MAX_UPLOAD_READ) -> str:
    """Read the text file ``name`` inside ``upload_dir``, refusing anything outside it."""
    if not isinstance(name, str) or not name.strip():
        raise ToolError("give the uploaded file's name, e.g. \"notes.txt\"")
    if "\x00" in name:
        raise ToolError("refused: the file name contains a NUL character")
    if os.path.isabs(name) or name.startswith("~"):
        raise ToolError(f"refused: {name!r} is an absolute path; give the file's name inside the uploads folder")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise ToolError(f"refused: {name!r} goes up a folder ('..'); only files in the uploads folder can be read")
    if not upload_dir or not os.path.isdir(upload_dir):
        raise ToolError("no files have been uploaded in this session")
    root = os.path.realpath(upload_dir)
    target = os.path.realpath(os.path.join(root, name))
    if os.path.commonpath([root, target]) != root:
        raise ToolError(f"refused: {name!r} is a link to a file outside the uploads folder")
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        files = _listing(root)
        have = ", ".join(files) if files else "none"
        raise ToolError(f"no uploaded file named {name!r}; the uploaded files are: {have}") from None
    except OSError as exc:
        raise ToolError(f"cannot open {name!r}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ToolError(f"{name!r} is not a regular file")
        parts: list[bytes] = []
        left = limit + 1
        while left > 0:
            part = os.read(fd, left)
            if not part:
                break
            parts.append(part)
            left -= len(part)
        data = b"".join(parts)
    finally:
        os.close(fd)
    if b"\x00" in data:
        raise ToolError(f"{name!r} is not a text file")
    truncated = len(data) > limit
    text = data[:limit].decode("utf-8", errors="replace")
    if truncated:
        text += f"\n[truncated: {name} has {info.st_size} bytes; only the first {limit} are shown]"
    return text


@tool(
    parameters={
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "the file's name in the uploads folder, e.g. \"notes.txt\""}
        },
        "required": ["name"],
    }
)
def read_upload(name: str, *, turn: Any) -> str:
    """Read a text file the user uploaded to this session (at most 64 KiB are returned)."""
    return read_upload_file(getattr(turn, "upload_dir", "") or "", name)


#: The built-in tools, by name.
BUILTIN_TOOLS: dict[str, Tool] = {t.name: t for t in (calculator, current_time, read_upload)}

__all__ = [
    "BUILTIN_TOOLS",
    "MAX_UPLOAD_READ",
    "Tool",
    "ToolError",
    "Tools",
    "as_tools",
    "calculator",
    "current_time",
    "evaluate",
    "format_number",
    "read_upload",
    "read_upload_file",
    "result_text",
    "tool",
]
