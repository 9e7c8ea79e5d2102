"""Ids sort in creation order, even many within one millisecond."""

from __future__ import annotations

from core import ids


def test_ids_made_in_a_burst_sort_in_creation_order():
    made = [ids.new_id("message") for _ in range(5000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
    assert all(ids.is_id(i) for i in made[:10])
