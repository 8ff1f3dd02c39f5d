"""The fake remotes tree, generated from a manifest into each world.

Every script is the same two-line wrapper, so storing one file per script
would only duplicate it: ``remotes.txt`` lists the paths and
:func:`install_remotes` writes the executable wrappers.  A wrapper finds the
fakes through ``$COMPAT_KIT`` (exported by the runner), so it keeps working
when scp copies it onto a fake host and when a remote shell runs it.
"""

from __future__ import annotations

import os
from typing import List

FAKES_DIR = os.path.dirname(os.path.abspath(__file__))
MANIFEST = os.path.join(FAKES_DIR, "remotes.txt")

#: ``$0`` lets the action know which script it is (last three components).
WRAPPER = (
    "#!/bin/sh\n"
    'exec python3 "${COMPAT_KIT:?COMPAT_KIT not set}/libexec/action" "$0" "$@"\n'
)


def script_paths(manifest: str = MANIFEST) -> List[str]:
    """Script paths (relative to the remotes root) listed in the manifest."""
    with open(manifest, encoding="utf-8") as f:
        lines = [line.strip() for line in f]
    paths = [line for line in lines if line and not line.startswith("#")]
    for path in paths:
        if path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"bad remotes manifest entry {path!r}")
    return paths


def install_remotes(dest: str, manifest: str = MANIFEST) -> List[str]:
    """Write one executable wrapper per manifest entry under ``dest``."""
    paths = script_paths(manifest)
    for rel in paths:
        full = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w", encoding="ascii") as f:
            f.write(WRAPPER)
        os.chmod(full, 0o755)
    return paths
