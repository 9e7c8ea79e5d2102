"""What the API's lifespan yields: the process's shared objects, typed. Starlette copies the
yielded mapping into each request's `request.state`; `state_of` is the one typed way to read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypedDict

from starlette.requests import Request

from api.auth import Authenticator
from api.fresh_runs import FreshRuns
from api.in_flight import InFlight
from core.admission import Admission
from core.event_hub import EventHub
from core.file_storage import FileStorage
from core.identity_providers import IdentityProviders
from core.infra import Infra
from core.mailer import LogMailer, Mailer
from memory.embeddings import Embedder


@dataclass(frozen=True)
class ApiState:
    infra: Infra
    auth: Authenticator
    admission: Admission
    # Followers of the sessions' event streams in this process share its reads (one XREAD).
    events: EventHub
    # Where uploaded files' bytes are kept (core.file_storage).
    storage: FileStorage
    # Embedders by model spec, made on first use (an `openai:` one loads its client only then).
    embedders: dict[str, Embedder] = field(default_factory=dict)
    # Sends invitation and password-reset links (core.mailer; chosen by AGENTOS_PEOPLE__MAILER).
    mailer: Mailer = field(default_factory=LogMailer)
    # Sign-in with OIDC and GitHub (core.identity_providers); None: built by `api.app` only.
    identity: IdentityProviders | None = None
    # Runs this process just created: their stream opens without looking them up (api.fresh_runs).
    fresh_runs: FreshRuns = field(default_factory=FreshRuns)
    # Work a request started that outlives its client (api.in_flight): a streaming POST's send.
    in_flight: InFlight = field(default_factory=InFlight)


class LifespanState(TypedDict):
    api: ApiState


def state_of(request: Request) -> ApiState:
    state: ApiState = request.state.api
    return state
