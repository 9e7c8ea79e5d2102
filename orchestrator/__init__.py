"""The orchestrator: models, graphs and the agent loop, independent of transport and storage."""
