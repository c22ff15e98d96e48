"""Errors meant for the person running instaseg: the CLI prints them without a traceback."""


class InstasegError(Exception):
    """A problem with the user's input (a file, a setting, a dataset) with a message saying what to do."""


class ConfigError(InstasegError, ValueError):
    """An unknown preset, an unknown or ill-typed config key."""


class DatasetError(InstasegError, ValueError):
    """A malformed dataset: the message names the file, image id or annotation id."""


class CheckpointError(InstasegError, ValueError):
    """A checkpoint that cannot be loaded safely or does not fit the model."""


class WeightsFetchError(InstasegError, OSError):
    """Published weights could not be obtained: offline, refused, timed out, cut off, or a file that
    fails its integrity check. The message names the URL, the expected file name and the folder where
    a file downloaded by hand is picked up."""


class NotAnImageError(DatasetError):
    """Bytes that no image decoder recognises (a text file named ``.png``, an upload of anything)."""


class ImageTooLargeError(DatasetError):
    """An image declaring more pixels than allowed: refused from its header, before decoding
    (a "decompression bomb" declares a huge size in a tiny file to exhaust memory)."""
