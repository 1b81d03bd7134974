"""Model allow-list matching on normalised ids, the same resolution pricing uses."""

from fnmatch import fnmatchcase
from functools import lru_cache

from .pricing import normalize_model


@lru_cache(maxsize=8192)
def model_matches(pattern: str, model: str | None) -> bool:
    """True when `model` (any spelling) is what `pattern` (id or glob) names."""
    if not model:
        return False
    wanted = normalize_model(pattern) if "*" not in pattern else pattern.lower()
    return fnmatchcase(normalize_model(model), wanted)


def allowed(patterns: tuple[str, ...] | None, model: str | None) -> bool:
    """No list allows everything; a list allows only the models it names."""
    if patterns is None:
        return True
    return any(model_matches(p, model) for p in patterns)
