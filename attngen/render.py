"""Jinja templates (``templates/*.j2``) rendered into TVMScript and parsed into TensorIR."""
from __future__ import annotations

import functools

import jinja2

from .resources import resource_dir


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resource_dir("templates"))),
        undefined=jinja2.StrictUndefined,  # a missing knob is an error, not an empty string
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


class TemplateError(RuntimeError):
    """Rendered TVMScript that TVM refuses; the message carries TVM's diagnostic."""


def parse(text: str):
    """TVMScript text -> PrimFunc or IRModule, with TVM's diagnostic kept in the error."""
    import tvm

    try:
        return tvm.script.from_source(text)
    except tvm.error.DiagnosticError as err:  # its message is otherwise swallowed
        raise TemplateError(f"TVMScript rejected:\n{err}\n--- source ---\n{text}") from None
