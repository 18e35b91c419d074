"""Seeded draws that depend on the items' content only: a draw ranks items by a hash of the seed and each item's
digest, so it does not depend on the items' order, the same seed draws the same items, and a larger draw holds every
smaller one (the first 100 are among the first 300)."""

import hashlib


def ranked(digests: list[str], seed: str) -> list[int]:
    """The index of each distinct digest's first occurrence, in the order of a hash of `seed` and the digest."""
    first = {digest: index for index, digest in reversed(list(enumerate(digests)))}
    order = sorted(first, key=lambda digest: hashlib.sha256(f"{seed}:{digest}".encode()).hexdigest())
    return [first[digest] for digest in order]
