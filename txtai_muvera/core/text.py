"""
Text module: checks on text that every storage layer (SQLite, JSON, the encoder) must be able to write
"""


def encodable(value):
    """
    Checks that every string in a value (keys and nested values included) encodes as UTF-8: lone surrogates do not.

    Args:
        value: str, number, list, tuple or dict

    Returns:
        True if UTF-8 can encode it
    """

    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return False
        return True
    if isinstance(value, dict):
        return all(encodable(k) and encodable(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(encodable(x) for x in value)

    return True
