"""editpipe: YAML manifests in, paid image edits, results and an exact cost ledger out."""

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
