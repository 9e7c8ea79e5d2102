"""The response bodies of the API as pydantic models, one module per resource.

Handlers answer through these models (`Call.reply`, `Call.page`) and `/openapi.json` is generated
from the same ones, so a documented schema is what is served: a field a model lacks never leaves
the server, and a row that misses a field the model requires fails loudly in tests."""
