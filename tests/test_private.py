"""Private names of tf_keras, tfmot and keras-tuner are reached only through tfopt._private, and each still
exists in the pinned versions (a version bump that drops one fails here, naming it)."""

import pathlib
import re

import pytest

import tfopt
from tfopt._private import PRIVATE, PrivateAPIError, private

ROOT = pathlib.Path(tfopt.__file__).parent
_PRIVATE_IMPORT = re.compile(r"^\s*(from|import)\s+(keras_tuner\.src|tf_keras\.src|tensorflow_model_optimization\.python"
                             r"|keras\.src|tensorflow\.python|tensorflow\.compiler)\b", re.M)


@pytest.mark.parametrize("key", sorted(PRIVATE))
def test_every_listed_private_name_exists_in_the_pinned_versions(key):
    module, attribute, why = PRIVATE[key]
    assert why, f"{key}: give the reason no public name serves"
    found = private(key)
    if attribute is not None:
        assert getattr(found, "__name__", attribute) == attribute


def test_a_missing_private_name_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(PRIVATE, "gone", ("keras_tuner.engine.trial", "NoSuchThing", "a test entry"))
    with pytest.raises(PrivateAPIError, match=r"keras_tuner\.engine\.trial\.NoSuchThing \(gone: a test entry\)"):
        private("gone")


def test_no_module_imports_private_code_directly():
    offenders = [f"{path.relative_to(ROOT.parent)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0).strip()}"
                 for path in sorted(ROOT.rglob("*.py")) if path.name != "_private.py"
                 for text in [path.read_text()] for m in _PRIVATE_IMPORT.finditer(text)]
    assert not offenders, "import these through tfopt._private.private(...) (listed with a reason):\n" + "\n".join(offenders)
