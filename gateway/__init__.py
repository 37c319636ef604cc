"""gateway: the app shell (settings, CLI, the HTTP API and pages)."""

import warnings

from cryptography.utils import CryptographyDeprecationWarning

# pyHanko imports cryptography's DSA key type at module load, which cryptography 51 deprecates;
# nothing here signs with DSA. Filtered here, before any gateway module imports pyHanko, so that
# no `keiyaku` command, server worker or job prints it to operators. Only that one warning: every
# other deprecation still shows (and fails the tests, which carry the same filter).
warnings.filterwarnings(
    "ignore", message="DSA is deprecated", category=CryptographyDeprecationWarning
)

__all__: list[str] = []
