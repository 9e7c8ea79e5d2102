"""`python -m skills`: rewrite `core/builtin_skills.json` from the built-in skills."""

from core.builtin_catalogue import CATALOGUE_PATH, builtin_catalogue
from skills.defaults import default_registry, write_catalogue

write_catalogue()
builtin_catalogue.cache_clear()
default_registry()
print(f"wrote {CATALOGUE_PATH}")
