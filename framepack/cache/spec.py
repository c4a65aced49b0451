"""How a cache is given: a spec ("teacache:0.15", "none", ...), a policy class or factory, or a template.

``parse_cache_spec`` reads the command line's ``--cache`` value; ``build_policy`` makes the
fresh policy one run samples with, from any of the accepted forms (``CacheSpec``).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .base import CachePolicy, NoCache
from .first_block import FirstBlockCache
from .magcache import FRAMEPACK_F1_25, MagCache
from .teacache import TeaCache

# None, a spec string, a CachePolicy subclass or factory, or a policy instance (a template: see build_policy)
CacheSpec = str | CachePolicy | Callable[[], CachePolicy] | None

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


def check_cache_spec(spec: object) -> None:
    """Raise ConfigError unless ``spec`` is a ``CacheSpec`` (a string is parsed, so a typo fails here)."""
    if isinstance(spec, str):
        parse_cache_spec(spec)
    elif spec is not None and not isinstance(spec, CachePolicy) and not callable(spec):
        raise ConfigError(
            "cache: expected a spec such as 'teacache:0.15', a CachePolicy (class, factory or instance) "
            f"or None, got {type(spec).__name__}"
        )


def build_policy(spec: CacheSpec) -> CachePolicy | None:
    """A fresh policy for one run: parsed from a string, made by a class or factory, or the
    ``for_run()`` copy of a policy instance, which is a template and is never run itself."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return parse_cache_spec(spec)
    if isinstance(spec, CachePolicy):
        return spec.for_run()
    policy = spec()
    if not isinstance(policy, CachePolicy):
        raise ConfigError(f"cache: the factory {spec!r} returned {type(policy).__name__}, expected a CachePolicy")
    return policy


def describe_policy(spec: CacheSpec) -> str:
    """A cache's class and settings, e.g. ``TeaCache(rel_l1_thresh=0.15)`` (never its statistics).

    None is described as ``NoCache()``: both run every block on every call.
    """
    policy = build_policy(spec) or NoCache()
    settings = {
        k: v
        for k, v in sorted(vars(policy).items())
        if not k.startswith("_") and k != "stats" and isinstance(v, (int, float, str, bool, tuple))
    }
    return f"{type(policy).__name__}({', '.join(f'{k}={v!r}' for k, v in settings.items())})"
