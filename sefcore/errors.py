"""Errors and skip reasons.

Two kinds of failure, kept apart on purpose (DESIGN.md §9):

* :class:`SefError` ends a command with one readable line (a wrong flag, a missing model, an unwritable output
  folder). The CLI prints ``error: <message>`` and exits non-zero; no traceback.
* :class:`SkipSample` drops *one* input from a build with a reason from :data:`SKIP_REASONS`; the build goes on
  and the reason is counted in the shard's stats and summarised at the end.
"""

from __future__ import annotations

# reason -> what the user is told about it (also the documentation of every skip rule)
SKIP_REASONS: dict[str, str] = {
    "missing": "the source file could not be read (gone, or no permission)",
    "empty": "zero-byte file",
    "not_an_image": "not an image format Pillow can identify (e.g. a text file with an image extension)",
    "corrupt": "the image data is truncated or damaged and cannot be decoded",
    "animated": "animated image (several frames); a single frame is not a real photo of the same kind",
    "too_large": "more pixels than --max-pixels (decompression-bomb guard)",
    "too_small": "smaller than the minimum side or the crop every generator needs",
    "generation_failed": "a generator raised on this image (the message is in the shard's stats)",
}


class SefError(Exception):
    """A user-facing error: the message is a complete sentence that says what to do."""


class SkipSample(Exception):
    """Raised by a pipeline stage to leave one sample out with a reason from SKIP_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in SKIP_REASONS:
            raise ValueError(f"unknown skip reason {reason!r}; known: {sorted(SKIP_REASONS)}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
