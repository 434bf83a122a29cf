"""appliance verify's judgement of the container_engines role's audit."""

from __future__ import annotations

from appliance.install.verify_engines import NAME, judge_engines


def test_a_host_without_container_engines_has_no_check() -> None:
    assert judge_engines("gpu-1", None) == []


def test_clean_rules_pass_and_say_what_is_mirrored() -> None:
    audit = {
        "containerd": {"upstreams": {"ghcr.io": {}, "docker.io": {}}},
        "docker": {"registry-mirrors": [], "insecure-registries": []},
        "problems": [],
    }
    (check,) = judge_engines("gpu-1", audit)
    assert (check.host, check.name, check.passed) == ("gpu-1", NAME, True)
    assert check.evidence == (
        "containerd mirrors docker.io, ghcr.io; Docker has no mirrors (it pulls by the local "
        "registry's references)"
    )


def test_each_problem_fails_the_check_and_is_shown() -> None:
    problems = [
        "containerd: ghcr.io: hosts.toml has no server: pulls fall back to ghcr.io",
        "docker: registry-mirrors ['https://m']: Docker falls back to Docker Hub after every "
        "mirror",
    ]
    (check,) = judge_engines("depot-1", {"containerd": {}, "docker": None, "problems": problems})
    assert check.passed is False
    assert check.evidence == "; ".join(problems)
