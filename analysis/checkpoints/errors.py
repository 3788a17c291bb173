"""Why a checkpoint is refused: one exception type per reason, all ``CheckpointError``."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names the problem."""


class UnsafeCheckpoint(CheckpointError):
    """A pickle that would import or run code when loaded; it was refused, nothing ran."""


class CorruptCheckpoint(CheckpointError):
    """Truncated, garbled, or not a checkpoint format at all."""


class NotAStateDict(CheckpointError):
    """A valid file whose content is not a (nested) dict of tensors."""


class UnsupportedTensor(CheckpointError):
    """A tensor we do not load: sparse, nested, quantized, meta, an unstored dtype, or a view
    claiming more elements than its storage holds. Named before any element is read."""


class CheckpointTooComplex(CheckpointError):
    """Inspecting the file would take more work than ``LoadLimits`` allow; it was stopped.

    ``visited`` (objects looked at) and ``inflated`` (archive bytes decompressed) say how
    much work was done before the refusal: the bound a denial-of-service test pins.
    """

    def __init__(self, message: str, *, visited: int = 0, inflated: int = 0) -> None:
        super().__init__(message)
        self.visited, self.inflated = visited, inflated


class ModelMismatch(CheckpointError):
    """The weights cannot be loaded into the task's model: names or shapes differ."""

    def __init__(
        self,
        missing: list[str],
        unexpected: list[str],
        misshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
        *,
        shown: int = 5,
    ) -> None:
        self.missing, self.unexpected, self.misshaped = missing, unexpected, misshaped

        def few(items: list[str]) -> str:
            more = f", ... (+{len(items) - shown} more)" if len(items) > shown else ""
            return ", ".join(items[:shown]) + more

        parts = []
        if missing:
            parts.append(f"{len(missing)} missing from the checkpoint: {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected: {few(unexpected)}")
        if misshaped:
            shapes = [f"{n} {list(got)} vs model {list(want)}" for n, got, want in misshaped]
            parts.append(f"{len(misshaped)} with the wrong shape: {few(shapes)}")
        super().__init__("the checkpoint does not fit the task's model: " + "; ".join(parts))
