"""Memory: long-term items in Postgres + pgvector (`memory.long_term`) and embeddings by spec
string (`memory.embeddings`). Imports only `core` and third-party libraries."""
