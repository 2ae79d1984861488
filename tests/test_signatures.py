"""Every public class shows its real signature (IDEs and ``help()`` read it), not ``(*args, **kwargs)``."""

import inspect

import gradest


def test_public_classes_have_real_signatures() -> None:
    for name in gradest.__all__:
        obj = getattr(gradest, name)
        if not inspect.isclass(obj):
            continue
        kinds = {p.kind for p in inspect.signature(obj).parameters.values()}
        assert not kinds & {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD}, name
