"""appliance verify on k3s: the judge of what kubectl said, on realistic objects (their shape:
tests/fixtures/k3s_cluster.py) healthy, then broken one way at a time."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from appliance.bundle.manifest import Component, FileEntry, Manifest
from appliance.install import verify
from appliance.install.verify_k3s import K3sExpect, judge_k3s, k3s_expect
from appliance.install.verify_models import Check
from tests.fixtures import k3s_cluster as cluster

EXPECT = K3sExpect.of(cluster.BUNDLE_IMAGES, cluster.AIRGAP, gpus={"gpu-1": 1})


def failed(checks: list[Check]) -> dict[str, str]:
    return {c.name: c.evidence for c in checks if not c.passed}


def judge(**broken: Any) -> list[Check]:
    return judge_k3s("depot-1", cluster.evidence(**broken), EXPECT)


def test_a_healthy_cluster_passes_every_check_and_names_what_it_saw() -> None:
    checks = judge()
    assert failed(checks) == {}
    names = {c.name: c.evidence for c in checks}
    assert names["k3s node Ready: gpu-1"] == "Ready=True (KubeletReady)"
    assert names["k3s GPUs advertised: gpu-1"].startswith("nvidia.com/gpu allocatable 1,")
    assert names["k3s model deployment available: alpha"] == "1/1 available, ready on /health"
    assert names["k3s network policy: appliance/runtimes-gateway-only"] == (
        "ingress only from 198.18.10.2/32"
    )
    # Every pod is judged: k3s's own three, the runtime and the device plugin.
    pods = {c.name.rpartition(": ")[2] for c in checks if c.name.startswith("k3s pod running")}
    assert len(pods) == 5 and "appliance/model-alpha-7d9f8c6b5-q8z4m" in pods


def test_a_node_not_ready_is_named_with_where_to_look() -> None:
    nodes = [
        cluster.node("depot-1", "198.18.10.2"),
        cluster.node("gpu-1", "198.18.10.11", 1, False),
    ]
    problems = failed(judge(nodes=nodes))
    assert set(problems) == {"k3s node Ready: gpu-1"}
    assert problems["k3s node Ready: gpu-1"].startswith("Ready=Unknown (NodeStatusUnknown);")
    assert "journalctl -u k3s-agent" in problems["k3s node Ready: gpu-1"]


def test_a_gpu_node_advertising_no_gpus_fails_against_its_facts() -> None:
    nodes = [cluster.node("depot-1", "198.18.10.2"), cluster.node("gpu-1", "198.18.10.11", 1)]
    nodes[1]["status"]["allocatable"]["nvidia.com/gpu"] = "0"
    problems = failed(judge(nodes=nodes))
    assert set(problems) == {"k3s GPUs advertised: gpu-1"}
    assert problems["k3s GPUs advertised: gpu-1"].startswith(
        "nvidia.com/gpu allocatable 0, the node's facts report 1 GPUs; check the "
        "nvidia-device-plugin pod on gpu-1"
    )
    # The plugin never registered: the resource is absent, not zero.
    del nodes[1]["status"]["allocatable"]["nvidia.com/gpu"]
    assert "allocatable 0" in failed(judge(nodes=nodes))["k3s GPUs advertised: gpu-1"]
    # Facts of 8 GPUs where the plugin advertises 1: not "some" GPUs, exactly the node's.
    eight = K3sExpect.of(cluster.BUNDLE_IMAGES, cluster.AIRGAP, gpus={"gpu-1": 8})
    assert not next(
        c for c in judge_k3s("depot-1", cluster.evidence(), eight) if "GPUs" in c.name
    ).passed


def test_a_gpu_node_missing_from_the_cluster_fails() -> None:
    problems = failed(judge(nodes=[cluster.node("depot-1", "198.18.10.2")]))
    assert problems == {
        "k3s node Ready: gpu-1": "GPU node gpu-1 has not joined the cluster; start k3s-agent "
        "there (appliance install)"
    }


def runtime_pod() -> dict[str, Any]:
    return copy.deepcopy(cluster.appliance_pods()[0])


def with_runtime(changed: dict[str, Any]) -> list[dict[str, Any]]:
    return [*cluster.k3s_pods(), changed, cluster.appliance_pods()[1]]


def test_a_pod_image_by_tag_fails_even_when_its_digest_is_held() -> None:
    changed = runtime_pod()
    changed["spec"]["containers"][0]["image"] = "ghcr.io/ggml-org/llama.cpp:server"
    problems = failed(judge(pods=with_runtime(changed)))
    where = "appliance/model-alpha-7d9f8c6b5-q8z4m"
    assert set(problems) == {f"k3s pod images held by the bundle: {where}"}
    assert problems[f"k3s pod images held by the bundle: {where}"].startswith(
        "main: ghcr.io/ggml-org/llama.cpp:server is a tag, not a digest the bundle holds (on gpu-1)"
    )


def test_an_image_pulled_from_docker_hub_fails_both_image_checks() -> None:
    changed = runtime_pod()
    rogue = "docker.io/library/nginx@sha256:" + "9f" * 32
    changed["status"]["containerStatuses"][0]["imageID"] = rogue
    problems = failed(judge(pods=with_runtime(changed)))
    where = "appliance/model-alpha-7d9f8c6b5-q8z4m"
    assert problems[f"k3s pod images held by the bundle: {where}"].startswith(
        f"main: runs {rogue}, a digest the bundle does not hold"
    )
    assert problems[f"k3s pod images from the local registry: {where}"].startswith(
        f"main: {rogue} is from docker.io/library/nginx, which neither the local registry nor "
        "k3s's airgap images hold"
    )


def test_k3s_own_images_count_only_when_the_airgap_tarball_holds_them() -> None:
    # Without the tarball's list, coredns' tag and digest are no image of the bundle.
    bare = K3sExpect.of(cluster.BUNDLE_IMAGES, (), gpus={"gpu-1": 1})
    problems = failed(judge_k3s("depot-1", cluster.evidence(), bare))
    coredns = "kube-system/kube-dns-6c86b4f8b7-x2kqz"
    assert f"k3s pod images held by the bundle: {coredns}" in problems
    assert f"k3s pod planned: {coredns}" in problems  # not k3s's own: nobody planned it
    # A coredns tag the tarball does not hold is refused with the tarball's list at hand too.
    pods = cluster.k3s_pods() + cluster.appliance_pods()
    pods[0]["spec"]["containers"][0]["image"] = "rancher/mirrored-coredns-coredns:1.13.0"
    assert f"k3s pod images held by the bundle: {coredns}" in failed(judge(pods=pods))


def test_a_crash_looping_runtime_fails_its_pod_and_its_model_deployment() -> None:
    changed = runtime_pod()
    status = changed["status"]["containerStatuses"][0]
    status |= {
        "ready": False,
        "restartCount": 7,
        "started": False,
        "state": {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": "back-off 5m0s restarting failed container=main "
                "pod=model-alpha-7d9f8c6b5-q8z4m",
            }
        },
    }
    deployments = cluster.live_deployments()
    deployments[0]["status"] |= {
        "availableReplicas": 0,
        "readyReplicas": 0,
        "unavailableReplicas": 1,
    }
    problems = failed(judge(pods=with_runtime(changed), deployments=deployments))
    where = "appliance/model-alpha-7d9f8c6b5-q8z4m"
    assert set(problems) == {
        f"k3s pod running: {where}",
        "k3s model deployment available: alpha",
    }
    assert problems[f"k3s pod running: {where}"].startswith(
        "main CrashLoopBackOff after 7 restarts: back-off 5m0s"
    )
    assert problems["k3s model deployment available: alpha"].startswith(
        "0 of 1 replicas available (model-alpha-7d9f8c6b5-q8z4m: main CrashLoopBackOff after 7"
    )
    assert (
        "k3s kubectl -n appliance logs deploy/model-alpha"
        in (problems["k3s model deployment available: alpha"])
    )


def test_an_extra_pod_nobody_planned_is_named() -> None:
    extra = cluster.pod(
        "default",
        "debug-shell",
        "gpu-1",
        cluster.RUNTIME_IMAGE,
        f"ghcr.io/ggml-org/llama.cpp@{cluster.DIGEST_RUNTIME}",
        {"run": "debug"},
    )
    problems = failed(judge(pods=cluster.k3s_pods() + cluster.appliance_pods() + [extra]))
    # A bundle image, run by someone: still nobody's plan.
    assert set(problems) == {"k3s pod planned: default/debug-shell"}
    assert problems["k3s pod planned: default/debug-shell"].startswith(
        "on gpu-1; no workload the installer planned (nor k3s's own) owns it"
    )


def test_a_missing_or_wrong_deployment_and_policy_fail() -> None:
    problems = failed(judge(deployments=[], policies=[]))
    assert problems["k3s model deployment available: alpha"].startswith(
        "no Deployment appliance/model-alpha;"
    )
    assert problems["k3s network policy: appliance/runtimes-gateway-only"].startswith(
        "missing: the runtimes are reachable from any pod or host"
    )
    # A readiness probe on another path, and a policy opened to every address.
    deployments = cluster.live_deployments()
    container = deployments[0]["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGet"]["path"] = "/"
    policies = cluster.live_policies()
    policies[0]["spec"]["ingress"][0]["from"] = [{"ipBlock": {"cidr": "0.0.0.0/0"}}]
    problems = failed(judge(deployments=deployments, policies=policies))
    assert problems["k3s model deployment available: alpha"] == (
        "readiness probe '/', the runtime's health path is '/health'"
    )
    assert "0.0.0.0/0" in problems["k3s network policy: appliance/runtimes-gateway-only"]


def test_kubectl_failing_or_talking_nonsense_is_one_failed_check() -> None:
    broken = cluster.evidence()
    broken["pods"] = {
        "rc": 1,
        "stdout": "",
        "stderr": "The connection to the server "
        "127.0.0.1:6443 was refused - did you specify the right host or port?",
    }
    (check,) = judge_k3s("depot-1", broken, EXPECT)
    assert (check.name, check.passed) == ("k3s: cluster state read", False)
    assert check.evidence.startswith("k3s kubectl get pods: The connection to the server")
    broken["pods"] = {"rc": 0, "stdout": "<html>", "stderr": ""}
    assert "did not answer JSON" in judge_k3s("depot-1", broken, EXPECT)[0].evidence
    assert not judge_k3s("depot-1", None, EXPECT)[0].passed


def test_the_fixtures_are_what_kubectl_prints() -> None:
    # kubectl's List wrapper, with Kubernetes objects inside (a check on the fixture itself).
    document = json.loads(cluster.evidence()["nodes"]["stdout"])
    assert (document["apiVersion"], document["kind"]) == ("v1", "List")
    assert {item["kind"] for item in document["items"]} == {"Node"}


def test_the_expectations_come_from_the_manifest_the_release_tarball_and_the_gpu_facts(
    tmp_path: Path,
) -> None:
    images = [(image.ref, min(image.digests), "0f" * 32) for image in cluster.AIRGAP]
    (tmp_path / "files").mkdir()
    tarball = cluster.airgap_tarball(tmp_path / "files" / "k3s-airgap.tar.zst", images)
    entry = FileEntry(
        path="files/k3s-airgap.tar.zst",
        sha256="0" * 64,
        size=1,
        kind="file",
        component="k3s-airgap-images",
    )
    components = [
        Component(name=i["ref"], kind="image", version=i["digest"]) for i in cluster.BUNDLE_IMAGES
    ]
    manifest = Manifest(
        name="m",
        release="1",
        created="2026-12-01T00:00:00Z",
        appliance_version="0",
        spec_sha256="0" * 64,
        target={"os": "debian-12", "arch": "amd64"},
        stack={"orchestrator": "k3s"},
        components=components,
        files=[entry],
    )
    evidence: dict[str, dict[str, Any]] = {
        "gpu-1": {"gpu": {"facts": {"gpus": [{"name": "NVIDIA H200"}] * 2}}},
        "depot-1": {"gpu": None},
    }
    expect = k3s_expect(manifest, tmp_path, evidence)
    assert tarball.is_file()
    assert expect.gpus == {"gpu-1": 2}
    assert expect.held == {cluster.DIGEST_RUNTIME, cluster.DIGEST_PLUGIN}
    assert expect.repositories == {"ghcr.io/ggml-org/llama.cpp", "nvcr.io/nvidia/k8s-device-plugin"}
    assert expect.airgap_refs() == {image.ref for image in cluster.AIRGAP}
    # The healthy cluster passes against what was read, but for the second GPU facts report.
    problems = failed(judge_k3s("depot-1", cluster.evidence(), expect))
    assert set(problems) == {"k3s GPUs advertised: gpu-1"}
    # A bundle without the tarball holds none of k3s's own images.
    bare = manifest.model_copy(update={"files": []})
    assert k3s_expect(bare, tmp_path, evidence).airgap == ()


def test_a_gpu_node_without_facts_is_held_to_the_count_it_was_labelled_with() -> None:
    nodes = [cluster.node("depot-1", "198.18.10.2"), cluster.node("gpu-1", "198.18.10.11", 4)]
    nodes[1]["status"]["allocatable"]["nvidia.com/gpu"] = "3"
    no_facts = K3sExpect.of(cluster.BUNDLE_IMAGES, cluster.AIRGAP)
    problems = failed(judge_k3s("depot-1", cluster.evidence(nodes=nodes), no_facts))
    assert problems["k3s GPUs advertised: gpu-1"].startswith(
        "nvidia.com/gpu allocatable 3, the node's facts report 4 GPUs"
    )


def test_a_deployment_changed_behind_the_installer_s_back_is_named_with_the_field() -> None:
    deployments = cluster.live_deployments()
    container = deployments[0]["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["readOnlyRootFilesystem"] = False
    container["volumeMounts"][0]["readOnly"] = False
    problems = failed(judge(deployments=deployments))
    assert set(problems) == {"k3s model deployment as planned: alpha"}
    where = "spec.template.spec.containers[0]"
    assert problems["k3s model deployment as planned: alpha"] == (
        f"{where}.securityContext.readOnlyRootFilesystem: False, planned True; "
        f"{where}.volumeMounts[0].readOnly: False, planned True; "
        "run appliance install to restore appliance/model-alpha"
    )
    # A removed GPU limit, and a container added beside the runtime.
    deployments = cluster.live_deployments()
    pod = deployments[0]["spec"]["template"]["spec"]
    del pod["containers"][0]["resources"]["limits"]
    assert (
        'resources.limits: null, planned {"nvidia.com/gpu": 1}'
        in failed(judge(deployments=deployments))["k3s model deployment as planned: alpha"]
    )
    pod["containers"].append({"name": "sidecar", "image": "busybox"})
    assert (
        "spec.template.spec.containers: ["
        in failed(judge(deployments=deployments))["k3s model deployment as planned: alpha"]
    )


def test_verify_on_k3s_judges_the_server_s_view_once_and_fails_without_one(
    tmp_path: Path,
) -> None:
    manifest = Manifest(
        name="m",
        release="1",
        created="2026-12-01T00:00:00Z",
        appliance_version="0",
        spec_sha256="0" * 64,
        target={"os": "debian-12", "arch": "amd64"},
        stack={"orchestrator": "k3s"},
        files=[],
        components=[
            Component(name=i["ref"], kind="image", version=i["digest"])
            for i in cluster.BUNDLE_IMAGES
        ],
    )
    # No host answered for the cluster: one failed check saying where the server belongs.
    (check,) = verify._judge_cluster(manifest, tmp_path, {"depot-1": {"k3s": None}})
    assert (check.host, check.name, check.passed) == ("all", "k3s: cluster state read", False)
    assert "/etc/rancher/k3s/k3s.yaml" in check.evidence
    # The server's evidence is judged once, as that host; the agents add no cluster checks.
    gathered: dict[str, dict[str, Any]] = {
        "depot-1": {"k3s": cluster.evidence()},
        "gpu-1": {"k3s": None},
    }
    checks = verify._judge_cluster(manifest, tmp_path, gathered)
    assert {c.host for c in checks} == {"depot-1"}
    # Without the airgap tarball in the bundle, k3s's own pods are not the bundle's.
    assert {c.name for c in checks if not c.passed} >= {
        "k3s pod images held by the bundle: kube-system/kube-dns-6c86b4f8b7-x2kqz"
    }


def _busybox_pod(namespace: str, name: str, owner: tuple[str, str] | None) -> dict[str, Any]:
    """A pod of one of k3s's own airgap images that mounts the node's root, privileged."""
    image = cluster.AIRGAP[0]  # any airgap image will do: busybox ships in the real tarball
    (digest,) = image.digests
    found = cluster.pod(
        namespace,
        name,
        "depot-1",
        image.ref.removeprefix("docker.io/"),
        f"{image.ref.rpartition(':')[0]}@{digest}",
        {"k8s-app": "kube-dns"},
        owner,
    )
    found["spec"] |= {"hostPID": True, "hostNetwork": True}
    found["spec"]["containers"][0]["securityContext"] = {
        "privileged": True,
        # coredns's own NET_BIND_SERVICE passes; SYS_ADMIN does not.
        "capabilities": {"add": ["NET_BIND_SERVICE", "SYS_ADMIN"]},
    }
    found["spec"]["volumes"] = [{"name": "root", "hostPath": {"path": "/"}}]
    return found


def test_a_privileged_host_root_pod_of_an_airgap_image_in_kube_system_fails() -> None:
    escape = _busybox_pod("kube-system", "kube-dns-6c86b4f8b7-zzzzz", ("ReplicaSet", "kube-dns"))
    problems = failed(judge(pods=cluster.k3s_pods() + cluster.appliance_pods() + [escape]))
    assert set(problems) == {"k3s pod confined: kube-system/kube-dns-6c86b4f8b7-zzzzz"}
    assert problems["k3s pod confined: kube-system/kube-dns-6c86b4f8b7-zzzzz"].startswith(
        "hostPID: true; hostNetwork: true; main: privileged; main: adds SYS_ADMIN; "
        "volume root: hostPath / (on depot-1)"
    )


def test_a_bare_pod_wearing_a_planned_workload_s_label_is_nobody_s() -> None:
    (runtime, plugin) = cluster.appliance_pods()
    bare = copy.deepcopy(runtime)
    bare["metadata"]["name"] = "model-alpha-impostor"
    del bare["metadata"]["ownerReferences"]
    problems = failed(judge(pods=[*cluster.k3s_pods(), runtime, plugin, bare]))
    assert set(problems) == {"k3s pod planned: appliance/model-alpha-impostor"}


def test_an_ephemeral_debug_container_of_a_foreign_image_fails() -> None:
    (runtime, plugin) = cluster.appliance_pods()
    runtime["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox:1.36"}]
    runtime["status"]["ephemeralContainerStatuses"] = [
        {"name": "debugger", "imageID": "docker.io/library/busybox@sha256:" + "d" * 64}
    ]
    where = "appliance/model-alpha-7d9f8c6b5-q8z4m"
    problems = failed(judge(pods=[*cluster.k3s_pods(), runtime, plugin]))
    assert set(problems) == {
        f"k3s pod images held by the bundle: {where}",
        f"k3s pod images from the local registry: {where}",
    }


def test_a_deployment_given_a_command_host_pid_or_no_replicas_is_not_as_planned() -> None:
    deployments = cluster.live_deployments()
    spec = deployments[0]["spec"]
    spec["replicas"] = 0
    spec["template"]["spec"]["hostPID"] = True
    spec["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", "nc -l 4444"]
    spec["template"]["spec"]["initContainers"] = [{"name": "x", "image": cluster.RUNTIME_IMAGE}]
    problem = failed(judge(deployments=deployments))["k3s model deployment as planned: alpha"]
    assert problem == (
        "spec.replicas: 0, planned 1; spec.template.spec: hostPID: true; "
        "spec.template.spec.initContainers: not planned; "
        "spec.template.spec.containers[0].command: ['sh', '-c', 'nc -l 4444'], not planned; "
        "run appliance install to restore appliance/model-alpha"
    )
