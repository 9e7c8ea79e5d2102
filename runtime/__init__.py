"""Workers: the Celery app, thin tasks, and the run lifecycle."""
