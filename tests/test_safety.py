"""No foreign code in the package: no pickle, only safe YAML. (Loading hostile model files: test_security_loading.py.)"""

import pathlib

import tfopt

ROOT = pathlib.Path(tfopt.__file__).parent


def test_no_pickle_and_only_safe_yaml_in_the_package():
    for source in ROOT.rglob("*.py"):
        text = source.read_text()
        assert "import pickle" not in text and "cloudpickle" not in text, source
        assert "yaml.load(" not in text and "yaml.unsafe_load" not in text, source
