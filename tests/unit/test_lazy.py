"""--lazy's checks before the freeze (lazy.py): every reason is found and worded."""

from __future__ import annotations

import pytest

from docker_hmigrate import errors, lazy

OK = lazy.LazyFacts(src_isa="x86_64", dst_isa="x86_64", dst_api="1.45",
                    dst_server="26.1.5", fast_path=None)


def test_api_versions_are_compared_as_numbers():
    assert lazy.parse_api("1.41") == (1, 41)
    assert lazy.parse_api("1.9") < lazy.parse_api("1.43") <= lazy.parse_api("1.45")
    assert lazy.parse_api("") == (0, 0) and lazy.parse_api("x.y") == (0, 0)


def test_dockerd_20_10_is_refused_with_the_reason():
    facts = lazy.LazyFacts(src_isa="x86_64", dst_isa="x86_64", dst_api="1.41",
                           dst_server="20.10.24+dfsg1", fast_path=None)
    (reason,) = lazy.refusals(facts)
    assert "20.10.24+dfsg1 (API 1.41)" in reason and "org.criu.config" in reason
    assert "1.43" in reason


def test_every_reason_is_listed():
    facts = lazy.LazyFacts(src_isa="x86_64", dst_isa="aarch64", dst_api="1.41",
                           dst_server="20.10", fast_path="runtime crun, not runc",
                           uffd="no userfaultfd")
    reasons = lazy.refusals(facts)
    assert len(reasons) == 4
    assert "same ISA" in reasons[0] and "crun" in reasons[2] and "userfaultfd" in reasons[3]


def test_hosts_that_allow_it_still_meet_the_missing_source_side():
    assert lazy.refusals(OK) == []
    with pytest.raises(errors.ValidationFailed) as caught:
        lazy.check(OK)
    assert "source side" in caught.value.message
    assert "without --lazy" in caught.value.hint and caught.value.exit_code == 12


def test_check_reports_the_hosts_reasons_first():
    with pytest.raises(errors.ValidationFailed) as caught:
        lazy.check(lazy.LazyFacts("x86_64", "x86_64", "1.41", "20.10.24", None))
    assert "20.10.24" in caught.value.message and "source side" not in caught.value.message


@pytest.mark.parametrize(("output", "refused"), [
    ("uffd-noncoop is supported\nrc=0\n", False),
    ("Error (criu/cr-check.c:1330): UFFD is not supported\nrc=1\n", True),
    ("sh: criu: not found\nrc=127\n", True),
    ("", True),
])
def test_uffd_probe_output(output, refused):
    reason = lazy.uffd_reason(output)
    assert (reason is not None) == refused
    if refused:
        assert "uffd-noncoop" in reason
