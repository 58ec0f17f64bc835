"""asyncssh as the appliance imports it: once, here, without the deprecation warnings
its import prints under cryptography 51.

asyncssh 2.24.1 (the newest release) names cryptography's DSA classes in type
annotations that are evaluated at import, and cryptography 51 deprecated DSA: each
name warns, five `CryptographyDeprecationWarning` lines on stderr at every `--ssh`
start, which operators read as a fault. The appliance never uses DSA (its host key is
Ed25519, access/hostkey.py). Pinning `cryptography<51` instead would hold back the
library's security fixes for a cosmetic problem, so only this category, only from
asyncssh's own modules and only while they are imported, is ignored; a warning at run
time, or from anything else, still shows."""

from __future__ import annotations

import warnings

from cryptography.utils import CryptographyDeprecationWarning

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", category=CryptographyDeprecationWarning,
                            module=r"asyncssh\.")
    import asyncssh
    from prompt_toolkit.contrib.ssh import PromptToolkitSSHSession

__all__ = ["PromptToolkitSSHSession", "asyncssh"]
