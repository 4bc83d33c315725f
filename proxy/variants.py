"""A/B: which variant of the settings a request gets.

`X-Rerank-Variant` picks one by name; otherwise the configured split buckets requests by a hash of a sticky header
(the same user keeps the same variant across requests and proxies), or at random when the header is absent.
"""
from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from dataclasses import dataclass

from .config import Config, RerankSettings

CONTROL = "control"


class UnknownVariant(ValueError):
    pass


@dataclass(frozen=True)
class VariantChoice:
    name: str  # `control` when no variant applies
    how: str  # header | sticky | random | none


NO_VARIANT = VariantChoice(CONTROL, "none")  # no A/B split, no variant asked for


def _bucket(value: str) -> float:
    digest = hashlib.blake2b(value.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def choose_variant(config: Config, headers: Mapping[str, str], rng: random.Random | None = None) -> VariantChoice:
    requested = headers.get("X-Rerank-Variant")
    if requested is not None:
        requested = requested.strip()
        if requested != CONTROL and requested not in config.variants:
            known = ", ".join([CONTROL, *config.variants])
            raise UnknownVariant(f"unknown rerank variant [{requested}]; configured variants: [{known}]")
        return VariantChoice(requested, "header")
    if config.ab is None:
        return NO_VARIANT
    sticky = headers.get(config.ab.sticky_header) if config.ab.sticky_header else None
    point = _bucket(sticky) if sticky else (rng or random).random()
    total = sum(config.ab.weights.values())
    cumulative = 0.0
    for name, weight in config.ab.weights.items():
        cumulative += weight / total
        if point < cumulative:
            return VariantChoice(name, "sticky" if sticky else "random")
    return VariantChoice(list(config.ab.weights)[-1], "sticky" if sticky else "random")


def apply_variant(config: Config, settings: RerankSettings, variant: str) -> RerankSettings:
    return settings if variant == CONTROL else config.variants[variant].apply_to(settings)
