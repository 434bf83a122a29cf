"""Names that become paths on hosts (models, releases): one rule, shared by the spec's validation
and the bundle's layout checks. Standard library only: the bundle's leaf modules import it."""

from __future__ import annotations

import re

# A model, file or wheel-set name: a directory or file name on every host.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# A release label: the name of a release directory on every host.
RELEASE_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")
