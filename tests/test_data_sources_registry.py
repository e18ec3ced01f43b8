"""The registry of data sources (dlwt.data.sources, issue 17.4) is the list the stages run from: it names
exactly the schema's data.source values, and each entry's module has both hooks the stages call.

    pytest -q tests/test_data_sources_registry.py
"""
import pytest

from dlwt.data import DataError, source, source_names
from dlwt.data.stages import acquire_stage, extract_stage
from dlwt.params import choices


def test_registry_names_the_schemas_sources():
    assert sorted(source_names()) == sorted(choices("data.source"))


@pytest.mark.parametrize("name", choices("data.source"))
def test_every_source_has_both_hooks_and_declares_its_keys(name):
    s = source(name)
    assert callable(s.hooks().acquire_source) and callable(s.hooks().extract_source)
    assert all(k.startswith("data.") for k in (*s.acquire_keys, *s.extract_keys))


def test_class_counts():
    assert source("cifar100").classes({}) == 100
    assert source("synthetic").classes({"synthetic": {"classes": 7}}) == 7
    assert source("imagefolder").classes({}) is None
    with pytest.raises(DataError, match="data.source='nope'; expected one of"):
        source("nope")


def test_stages_run_the_registrys_hooks(tmp_path, monkeypatch):
    """acquire/extract go through the entry of data.source: its hooks get the resolved cfg."""
    import dlwt.data.digits as digits

    seen = []
    monkeypatch.setattr(digits, "acquire_source", lambda c: seen.append(("acquire", c["source"])) or {"x": "y"})
    monkeypatch.setattr(digits, "extract_source", lambda c: seen.append(("extract", c["digits"]["size"])) or "out")
    cfg = {"source": "digits", "dataset": "d", "root": str(tmp_path), "digits": {"size": 9}}
    assert acquire_stage(cfg) == {"x": "y"} and extract_stage(cfg) == "out"
    assert seen == [("acquire", "digits"), ("extract", 9)]
    assert (tmp_path / "d" / "acquired.json").exists()
