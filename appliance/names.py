"""Names that become paths on hosts (models, releases): one rule, shared by the spec's validation
and the bundle's layout checks. Standard library only: the bundle's leaf modules import it."""

from __future__ import annotations

import re

# A model, file or wheel-set name: a directory or file name on every host.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# A release label: the name of a release directory on every host.
RELEASE_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")

# Control characters (C0, DEL, C1), Unicode line and paragraph separators, format characters
# (zero-width and bidirectional overrides, which make a name print as another) and lone
# surrogates: none belongs in a name, and each can make a log line or a terminal lie.
_OTHER_CONTROLS = (
    "\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
    "\ufff9-\ufffb\ud800-\udfff"
)
CONTROL_RE = re.compile(f"[\x00-\x1f{_OTHER_CONTROLS}]")
# The same, for free text that may span lines (a spec's description): tab and line ends pass.
TEXT_CONTROL_RE = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f{_OTHER_CONTROLS}]")
