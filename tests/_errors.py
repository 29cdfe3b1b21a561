"""The one check of a probekit error in tests: its exact class, the words it must name, and a fix."""


def check(info, cls, *words) -> str:
    """``info`` from ``pytest.raises``: the error is exactly ``cls``, names every one of ``words`` and says how to fix it."""
    err = info.value
    assert type(err) is cls, f"expected {cls.__name__}, got {type(err).__name__}: {err}"
    text = str(err)
    for w in words:
        assert w in text, f"{w!r} not in: {text}"
    assert "How to fix" in text and err.fix
    return text
