"""editpipe: YAML manifests in, paid image edits, results and an exact cost ledger out.

The library, in five layers; a module imports only from its own layer or the ones below
(``tests/test_layers.py`` holds the map and checks every import):
1. domain: ``manifest``, ``plan``, ``modelspec``, ``records``, ``failures``, ``ledger``, ``layout``,
   ``callbacks``, ``webhook_signature``, ``schedules_file``, ``settings``, ``errors``; pure,
   no I/O clients;
2. adapters: ``provider``, ``simulator``, ``storage``, ``catalog``, ``run_index``,
   ``thumbnails``, ``state`` (the only holder of a Redis client);
3. engine: ``limits``, ``dispatch``, ``execution``, ``submission``, ``reconcile``, ``schedules``;
4. outputs: ``report``, ``notify``;
5. interfaces: ``cli``, ``webhooks``, ``embedded``, and ``workers`` beside this package.
This package itself re-exports the error hierarchy and ``Settings`` (domain).
"""

from .errors import (
    AuthFailed,
    BudgetExceeded,
    EditpipeError,
    ManifestError,
    ManifestIssue,
    PredictionFailed,
    ProviderError,
    ProviderTransient,
    RateLimited,
    RunRejected,
    SettingsError,
    StorageError,
    SubmitUnconfirmed,
)
from .settings import Settings

__version__ = "0.1.0"

__all__ = [
    "AuthFailed",
    "BudgetExceeded",
    "EditpipeError",
    "ManifestError",
    "ManifestIssue",
    "PredictionFailed",
    "ProviderError",
    "ProviderTransient",
    "RateLimited",
    "RunRejected",
    "Settings",
    "SettingsError",
    "StorageError",
    "SubmitUnconfirmed",
    "__version__",
]
