"""The errors that mean "bad input" (a message for the user, not a traceback)."""

from __future__ import annotations


def user_errors() -> tuple[type[BaseException], ...]:
    """Every error class whose message names the bad file/key/value and what to do."""
    from glsim.config import ParamsError
    from glsim.data.manifest import ManifestError
    from glsim.data.registry import DatasetError
    from glsim.data.shards import ShardError
    from glsim.models.backbone import WeightsError

    errors: list[type[BaseException]] = [
        ParamsError,
        ManifestError,
        DatasetError,
        ShardError,
        WeightsError,
    ]
    try:
        from glsim.validation import ValidationFailed

        errors.append(ValidationFailed)
    except ImportError:  # pragma: no cover - validation extras missing
        pass
    return tuple(errors)
