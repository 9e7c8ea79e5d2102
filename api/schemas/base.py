"""What every response model shares, and the list envelope `{data, next_cursor}`."""

from __future__ import annotations

from functools import cache
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model


class Out(BaseModel):
    """A response body. Fields the model does not declare are dropped on the way out (so an
    internal column can never leak), and values are taken as stored (no coercion)."""

    model_config = ConfigDict(extra="ignore")


class Open(BaseModel):
    """An object whose declared fields are documented but which may carry more (event payloads,
    stored JSON written by older versions): extra fields pass through."""

    model_config = ConfigDict(extra="allow")


class Page(Out):
    """A page of a list. `next_cursor` is null on the last page; pass it as `?cursor=`."""

    data: list[Any]
    next_cursor: str | None = Field(description="Null on the last page; pass it as `?cursor=` for the next one.")


M = TypeVar("M", bound=BaseModel)


@cache
def page_of(item: type[BaseModel], name: str | None = None, base: type[Page] = Page) -> type[Page]:
    """The envelope model of a list of `item`s, named `<Item>Page` (one class per item model)."""
    model: type[Page] = create_model(name or f"{item.__name__}Page", __base__=base, data=(list[item], ...))  # type: ignore[valid-type]
    model.__doc__ = f"A list of {item.__name__} objects: `{{data, next_cursor}}`."
    return model
