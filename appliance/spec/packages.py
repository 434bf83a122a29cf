"""The spec's ``packages:`` section: apt sources, and the OS packages carried beyond the roles'."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Discriminator, Field, Tag, field_validator

from appliance.spec.checks import check_package, check_url, err
from appliance.spec.common import StrictModel
from appliance.spec.nvidia import NvidiaAptSource


class AptSource(StrictModel):
    """A Debian-style archive whose signed index pins every package."""

    kind: Literal["apt"]
    url: str = Field(
        description="http://, https:// or file:// URL of the archive; ${DEBIAN_MIRROR} takes it "
        "from the environment"
    )
    suites: list[str] = Field(min_length=1)
    components: list[str] = Field(min_length=1)
    keyring: str = Field(
        description="OpenPGP keyring that signs the archive's Release file, relative to the spec"
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_url(value, ("http", "https", "file"))

    @field_validator("keyring")
    @classmethod
    def _keyring(cls, value: str) -> str:
        if not value.strip():
            raise err("empty_keyring", "name the keyring file that signs this archive")
        return value


def _source_kind(value: Any) -> str:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    # Anything but nvidia is read as an apt archive, whose own checks then name what is wrong.
    return "kind=nvidia" if kind == "nvidia" else "kind=apt"


class Packages(StrictModel):
    """OS packages resolved with their dependencies into the bundle's local repository.

    The packages the appliance's own roles install are always added; ``install`` lists what
    the site wants on top, and may be left out.
    """

    # Discriminated on ``kind``: a Debian-style archive, or one of NVIDIA's flat repositories.
    sources: list[
        Annotated[
            Annotated[AptSource, Tag("kind=apt")] | Annotated[NvidiaAptSource, Tag("kind=nvidia")],
            Discriminator(_source_kind),
        ]
    ] = Field(min_length=1)
    # What the site wants on top of what the roles install (build-bundle adds the roles' own
    # packages, declared in each role): may be empty.
    install: list[Annotated[str, AfterValidator(check_package)]] = Field(
        default_factory=list,
        description="packages to carry beyond those the roles need, NAME or NAME=VERSION",
    )

    @field_validator("install")
    @classmethod
    def _install(cls, value: list[str]) -> list[str]:
        first: dict[str, int] = {}
        for index, item in enumerate(value):
            name = item.partition("=")[0]
            if name in first:
                raise err(
                    "duplicate",
                    "package '{name}' is listed twice ([{first}] and [{second}])",
                    name=name,
                    first=first[name],
                    second=index,
                )
            first[name] = index
        return value
