"""Every setting is declared once, in src/dlwt/params_schema.yaml (type, default, why): a params file may leave
out any key that has a default, the library's data defaults and the CLI's choices are the schema's, and
params.yaml lists every key a stage reads (DVC tracks only those it finds there).

    nice pytest -q tests/test_params.py
"""
from pathlib import Path

import pytest
import yaml

from dlwt import dag
from dlwt.data.config import DATA_DEFAULTS, resolve
from dlwt.params import ParamsError, complete, load, schema

REPO = Path(__file__).resolve().parents[1]


def leaves(node, prefix=""):
    props = node.get("properties")
    if not props or "default" in node:
        yield prefix, node
        return
    for key, sub in props.items():
        yield from leaves(sub, f"{prefix}.{key}" if prefix else key)


def test_every_setting_has_a_type_a_description_and_a_default_unless_the_experiment_must_choose():
    s = schema()
    required = {"exp", "data", "model", "train", *(f"model.{k}" for k in ("archs", "rules", "seeds")),
                "train.epochs", "train.lr"}
    for key, node in leaves(s):
        assert node.get("description"), f"{key}: no description"
        assert "type" in node or "enum" in node, f"{key}: no type"
        assert ("default" in node) != (key in required), f"{key}: a default exactly when not required"


def test_a_params_file_with_only_the_experiment_gets_every_default(tmp_path):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({
        "exp": "x", "model": {"archs": ["resnet18"], "rules": ["bp"], "seeds": [0]},
        "data": {"dataset": "d", "source": "synthetic"}, "train": {"epochs": 1, "lr": 0.1}}))
    params = load(tmp_path / "p.yaml")
    assert params["data"]["num_workers"] == DATA_DEFAULTS["num_workers"]
    assert params["mirror"]["batch_size"] == 16 and params["report"]["dpi"] == 150
    assert params["train"]["device"] == "cuda" and params["container"] == "dlwt.sif"
    (tmp_path / "q.yaml").write_text(yaml.safe_dump({"exp": "x"}))
    with pytest.raises(ParamsError, match="'data' is a required property|required"):
        load(tmp_path / "q.yaml")


def test_the_library_data_defaults_are_the_schemas():
    assert DATA_DEFAULTS == complete({"data": {}})["data"]
    assert resolve({"res": 32})["val_res"] == 32  # null val_res means res
    with pytest.raises(Exception, match="write_mode"):
        resolve({"write_mode": "png"})


def test_params_yaml_lists_every_key_a_stage_reads():
    """DVC rejects a params key missing from params.yaml, and dvc.yaml leaves such keys out: a key params.yaml
    did not list would be one whose edits DVC never sees. DVC itself reads the checkout's dvc.yaml and
    params.yaml here: every stage depends on exactly the keys its job reads, and each has a value in params.yaml."""
    from dvc.repo import Repo

    params = load(REPO / "params.yaml")
    with Repo(str(REPO)) as repo:
        stages = {s.name: s for s in repo.index.stages}
        for job in dag.jobs(params):
            deps = [d for d in stages[job.name].deps if hasattr(d, "params")]
            assert [k for d in deps for k in d.params] == job.keys, job.name
            found = {k for d in deps for k in d.read_params()}  # the values DVC reads from params.yaml
            assert found >= set(job.keys), f"{job.name}: {sorted(set(job.keys) - found)} not in params.yaml"


def test_the_cli_accepts_exactly_the_schemas_choices(capsys):
    from dlwt.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["convert", "--write-mode", "png"])
    assert "proportion" in capsys.readouterr().err
    assert build_parser().parse_args(["acquire", "--source", "fashion-mnist"]).source == "fashion-mnist"
