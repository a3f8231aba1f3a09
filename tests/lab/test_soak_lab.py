"""One round of the soak (bench/soak.py): Redis under acknowledged INCRs, with its client
connected, moved a -> b and back; nothing acknowledged is lost, nothing is left behind."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab


def test_soak_one_round(host_a, host_b):
    from bench.soak import soak

    res = soak(moves=2, baseline_seconds=2, verbose=False)
    assert res["succeeded"] == 2, res["failures"]
    assert res["acked_writes_lost"] == 0, res
    assert res["final_value"] >= res["last_acked"] > 0
    assert res["leftovers"] == [], res["leftovers"]
    assert res["client_gap_max"] < 60
