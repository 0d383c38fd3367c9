"""read_mapping keeps files it parsed (by content): repeated reads are copies, edits re-parse."""

from __future__ import annotations

from pathlib import Path

import pytest

from moesim.errors import ConfigError
from moesim.inputs import config


def test_repeated_read_is_an_independent_copy(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("name: a\nnodes:\n  - {id: 1}\n")
    first = config.read_mapping(path)
    first["nodes"][0]["id"] = 99  # a caller changing what it got
    second = config.read_mapping(path)
    assert second == {"name": "a", "nodes": [{"id": 1}]}
    assert second is not first and second["nodes"] is not first["nodes"]


def test_an_edited_file_is_parsed_again(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("name: a\n")
    assert config.read_mapping(path) == {"name": "a"}
    path.write_text("name: b\n")
    assert config.read_mapping(path) == {"name": "b"}
    path.write_text("name: [b\n")  # broken now: the error, not the old content
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.read_mapping(path)


def test_the_finite_check_is_part_of_the_key(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("x: .nan\n")
    assert config.read_mapping(path, finite=False)["x"] != 0  # NaN allowed here
    with pytest.raises(ConfigError):
        config.read_mapping(path)  # and refused where finite numbers are required


ROOT = Path(__file__).resolve().parents[1]
YAML_FILES = sorted([*ROOT.glob("scenarios/*.yaml"), *ROOT.glob("moesim/presets/**/*.yaml"),
                     *ROOT.glob("tests/data/**/*.yaml")])


@pytest.mark.skipif(config._FastLoader is None, reason="PyYAML built without libyaml")
@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_libyaml_reads_every_shipped_file_as_the_pure_loader_does(path: Path) -> None:
    import yaml

    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        pure = yaml.load(text, Loader=config._Loader)  # noqa: S506
    except Exception as exc:  # a deliberately bad file: the fast path defers to the pure one
        with pytest.raises(type(exc)):
            config._load_yaml(text)
        return
    assert yaml.load(text, Loader=config._FastLoader) == pure  # noqa: S506


def test_errors_come_from_the_pure_loader(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("a: 1\nb: [2\nc: 3\n")
    with pytest.raises(ConfigError) as fast:
        config.read_mapping(path)
    monkeypatch.setattr(config, "_FastLoader", None)
    config._PARSED.clear()
    with pytest.raises(ConfigError) as pure:
        config.read_mapping(path)
    assert str(fast.value) == str(pure.value)
