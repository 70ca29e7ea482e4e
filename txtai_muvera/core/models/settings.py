"""
Settings module
"""

from .checkpoint import SETTINGS


def resolve(checkpoint, tokenizer, compatible, overrides):
    """
    Resolves encoding settings: checkpoint values, then keyword overrides, validated and converted to token ids.

    Args:
        checkpoint: Checkpoint
        tokenizer: transformers tokenizer
        compatible: if True, resolve settings the way txtai 9.14's LatePooling does
        overrides: keyword overrides

    Returns:
        dict with "settings" (JSON-serialisable resolved settings) and token ids used while encoding
    """

    settings = dict(checkpoint.defaults)
    settings.update(overrides)
    validate(settings)

    options = {"token_type_ids": "token_type_ids" in getattr(tokenizer, "model_input_names", ["token_type_ids"])}

    if compatible:
        # txtai reads stored values as they are (no PyLate defaults) and prepends prefixes as text
        stored = {**checkpoint.stored, **overrides}
        maximum = tokenizer.model_max_length if tokenizer.model_max_length and tokenizer.model_max_length < int(1e29) else None
        settings.update(
            query_prefix=stored.get("query_prefix") or "",
            document_prefix=stored.get("document_prefix") or "",
            query_length=stored.get("query_length"),
            document_length=stored.get("document_length"),
            do_query_expansion=False,
            attend_to_expansion_tokens=False,
            skiplist_words=[],
        )
        options.update(
            query_prefix_text=settings["query_prefix"],
            document_prefix_text=settings["document_prefix"],
            query_maxlength=settings["query_length"] or maximum,
            document_maxlength=settings["document_length"] or maximum,
            query_prefix_id=None,
            document_prefix_id=None,
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            skiplist_ids=[],
        )

    else:
        # Like PyLate: no expansion means no attention to expansion tokens
        if not settings["do_query_expansion"]:
            settings["attend_to_expansion_tokens"] = False

        # Prefix tokens must be single tokens of the vocabulary; PyLate registers them so literal prefixes in texts stay whole
        prefixes = {}
        for key in ("query_prefix", "document_prefix"):
            prefixes[key] = tokenid(tokenizer, settings[key], key) if settings[key] else None

        known = [settings[key] for key in ("query_prefix", "document_prefix") if settings[key]]
        if known:
            tokenizer.add_tokens(known)

        for key in ("query_length", "document_length"):
            minimum = 2 + (prefixes[key.replace("length", "prefix")] is not None)
            if settings[key] < minimum:
                raise ValueError(f"{key} must be at least {minimum} (special and prefix tokens count), got {settings[key]}")

        # PyLate pads queries with the mask token (expansion), or the EOS token for models without one
        pad = next((x for x in (tokenizer.mask_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if x is not None), 0)

        # Words missing from the vocabulary map to the unknown token, as in PyLate
        skiplist = [tokenizer.convert_tokens_to_ids(word) for word in settings["skiplist_words"]]
        skiplist = sorted({x for x in skiplist if x is not None})

        options.update(query_prefix_id=prefixes["query_prefix"], document_prefix_id=prefixes["document_prefix"], pad_id=pad, skiplist_ids=skiplist)

    settings["skiplist_words"] = list(settings["skiplist_words"])
    settings.update(compatible=bool(compatible), layout=checkpoint.layout)
    options["settings"] = settings
    return options


def validate(settings):
    """
    Validates settings types.

    Args:
        settings: settings dict
    """

    for key in ("query_prefix", "document_prefix"):
        if not isinstance(settings[key], str):
            raise ValueError(f"{key} must be a string ('' for no prefix), got {settings[key]!r}")

    for key in ("query_length", "document_length"):
        if isinstance(settings[key], bool) or not isinstance(settings[key], int) or settings[key] < 1:
            raise ValueError(f"{key} must be a positive integer, got {settings[key]!r}")

    for key in ("do_query_expansion", "attend_to_expansion_tokens"):
        if not isinstance(settings[key], bool):
            raise ValueError(f"{key} must be True or False, got {settings[key]!r}")

    words = settings["skiplist_words"]
    if not isinstance(words, (list, tuple)) or not all(isinstance(x, str) for x in words):
        raise ValueError(f"skiplist_words must be a list of strings, got {words!r}")

    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown}, accepted: {list(SETTINGS)}")


def tokenid(tokenizer, token, name):
    """
    Looks up a prefix token id.

    Args:
        tokenizer: transformers tokenizer
        token: prefix token
        name: setting name, for errors

    Returns:
        token id
    """

    uid = tokenizer.convert_tokens_to_ids(token)
    if uid is None or (uid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise ValueError(
            f"{name} {token!r} is not a token of the checkpoint's vocabulary: use a vocabulary token such as '[unused0]', or '' for no prefix"
        )

    return uid
