"""A stream token (`POST /v1/stream-tokens`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from api.schemas.base import Out


class StreamToken(Out):
    """The token, when it stops opening streams, and the stream's URL with it."""

    token: str
    expires_at: datetime
    url: str = Field(description="Ready for `new EventSource(url)`; append `&after=<seq>` to resume.")
