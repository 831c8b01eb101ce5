"""The one error type bad datasets raise: its message names the path and what was expected."""


class DatasetError(ValueError):
    """A dataset path or layout that cannot be used; raised before any training starts."""
