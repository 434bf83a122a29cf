"""``appliance spec``: check a spec and describe the format."""

from __future__ import annotations

import json
from pathlib import Path

import click

from appliance.cli.output import Output
from appliance.spec import SPEC_VERSION, Spec, load_spec


@click.group("spec")
def spec_group() -> None:
    """Check appliance specs (appliance.yaml) before building anything.

    A spec declares every artifact a bundle holds, each pinned: files by
    sha256, images by digest, models by revision, Python wheels by exact
    version, OS packages through their archive's signed index.
    """


@spec_group.command("validate")
# No dir_okay=False: the loader says what is wrong with a directory, --json included.
@click.argument("spec_file", metavar="SPEC", type=click.Path(path_type=Path))
@click.pass_obj
def validate(output: Output, spec_file: Path) -> None:
    """Validate SPEC completely and report every problem at once.

    Each problem names its path in the document and its line, for example
    `images[2].ref (line 14): digest missing: pin images by @sha256:...`.
    Nothing is fetched and no host is touched. Exits 0 when the spec is valid.

    \b
    Example:
      appliance spec validate examples/demo.yaml
    """
    spec = load_spec(spec_file)
    counts = {
        "targets": len(spec.targets),
        "files": len(spec.files),
        "packages": len(spec.packages.install) if spec.packages else 0,
        "images": len(spec.images),
        "models": len(spec.models),
        "wheel_sets": len(spec.wheels),
    }
    targets = ", ".join(f"{t.os}/{t.arch}" for t in spec.targets)
    stack = spec.stack
    summary = ", ".join(f"{k.replace('_', ' ')} {n}" for k, n in counts.items())
    gpu = ""
    if spec.nvidia is not None:
        driver = spec.nvidia.driver
        pinned = driver.version or (f"branch {driver.branch}" if driver.branch else "newest")
        gpu = (
            f"\n  nvidia:  driver from {driver.source} ({pinned}), {driver.modules} modules, "
            f"kernel ABIs {', '.join(spec.nvidia.kernel_abis)}"
        )
    output.result(
        {
            "ok": True,
            "spec": str(spec_file),
            "version": spec.version,
            "name": spec.name,
            "release": spec.release,
            "targets": [t.model_dump() for t in spec.targets],
            "stack": stack.model_dump(),
            "counts": counts,
            "nvidia": spec.nvidia.model_dump() if spec.nvidia else None,
        },
        human=(
            f"{spec_file}: valid spec v{spec.version}, {spec.name} {spec.release}\n"
            f"  targets: {targets}\n"
            f"  stack:   registry={stack.registry} object_store={stack.object_store} "
            f"orchestrator={stack.orchestrator} runtime={stack.runtime}\n"
            f"  holds:   {summary}{gpu}"
        ),
    )


@spec_group.command("schema")
@click.pass_obj
def schema(output: Output) -> None:
    """Print the JSON Schema of the spec format.

    Point your editor at it (for example yaml-language-server's
    `# yaml-language-server: $schema=appliance.schema.json`) to get completion
    and checks while you write a spec.
    """
    document = Spec.model_json_schema()
    document["$id"] = f"https://appliance.invalid/schema/spec-v{SPEC_VERSION}.json"
    click.echo(json.dumps(document, indent=2, sort_keys=True))
