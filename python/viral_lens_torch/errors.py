"""Exception types raised by viral_lens_torch."""


class ViralLensError(Exception):
    """Base class of every error raised on purpose by viral_lens_torch."""


class LayerDiscoveryError(ViralLensError, LookupError):
    """The decoder layers (or the projector / vision tower) of a model could not be found."""


class ImageTokenCountError(ViralLensError, ValueError):
    """A sample does not have the expected number of image-token positions."""


class TokenGridError(ViralLensError, ValueError):
    """Target features do not have the expected number of tokens / grid."""


class CaptureFormatError(ViralLensError, ValueError):
    """A capture directory or manifest is invalid, or a batch does not fit the capture."""


class DuplicateSampleError(CaptureFormatError):
    """A sample id is already in the capture (or repeated within a batch)."""


class CaptureWriteError(ViralLensError, OSError):
    """Writing a file of the capture failed (disk full, permission, ...). ``path`` is the file."""

    def __init__(self, message, path=None):
        super().__init__(message)
        self.path = path
