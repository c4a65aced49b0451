"""Parse the command line's ``--cache`` value ("teacache:0.15", "magcache", "none", ...) into a policy."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .base import CachePolicy, NoCache
from .first_block import FirstBlockCache
from .magcache import FRAMEPACK_F1_25, MagCache
from .teacache import TeaCache

# name -> the policy built from an optional threshold (its first constructor argument)
_POLICIES: dict[str, Callable[..., CachePolicy]] = {
    "teacache": TeaCache,
    "magcache": MagCache,
    "magcache-f1": lambda *threshold: MagCache(*threshold, ratios=FRAMEPACK_F1_25),
    "fbcache": FirstBlockCache,
}


def parse_cache_spec(spec: str) -> CachePolicy:
    """``none`` or ``NAME[:THRESHOLD]`` with NAME one of teacache, magcache, magcache-f1, fbcache.

    Without a threshold each policy takes its default (TeaCache 0.15, MagCache 0.1 with the
    official I2V table, magcache-f1 the same with the F1 table, FirstBlockCache 0.06).
    """
    name, colon, value = (part.strip() for part in spec.strip().lower().partition(":"))
    if name == "none":
        if colon:
            raise ConfigError(f"cache {spec!r}: 'none' takes no threshold")
        return NoCache()
    if name not in _POLICIES:
        choices = ", ".join(["none", *_POLICIES])
        raise ConfigError(
            f"cache {spec!r}: unknown policy {name!r}; expected one of {choices}, optionally NAME:THRESHOLD"
        )
    if not colon:
        return _POLICIES[name]()
    try:
        threshold = float(value)
    except ValueError:
        raise ConfigError(f"cache {spec!r}: threshold {value!r} is not a number (e.g. {name}:0.1)") from None
    return _POLICIES[name](threshold)
