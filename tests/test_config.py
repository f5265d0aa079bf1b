"""The configuration is validated at start and refuses bad input naming key, value and expectation."""

from pathlib import Path

import pytest

from agent.config import Config, ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "revwatch.example.toml"


def test_defaults_are_valid_and_in_one_place():
    config = load_config()
    assert config == Config()
    assert config.rev.tolerance == 0.05
    assert config.publish.endpoint == "tcp://127.0.0.1:5556"
    assert config.phases.to_phases().labels == {"pore": 1, "electrolyte": 2, "active": 3}


def test_example_file_matches_defaults_except_folder_and_detector():
    """The example names a project folder, so also the detector whose slices make the volume."""
    example = load_config(EXAMPLE)
    assert example.acquisition.folder == Path("D:/ASV/cathode-01")
    assert example.acquisition.detector == "SEM Image"
    assert example.model_dump(exclude={"acquisition": {"folder", "detector"}}) == Config().model_dump(
        exclude={"acquisition": {"folder", "detector"}}
    )


def test_overrides_win_over_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[rev]\ntolerance = 0.1\n[acquisition]\npolling = false\n")
    config = load_config(path, ["rev.tolerance=0.03", "acquisition.polling=true", 'analysis.scheduler="tcp://h:8786"'])
    assert config.rev.tolerance == 0.03
    assert config.acquisition.polling is True
    assert config.analysis.scheduler == "tcp://h:8786"


@pytest.mark.parametrize(
    "text, key, fragment",
    [
        ("[rev]\ntolerance = 1.5\n", "rev.tolerance", "less than 1"),
        ("[acquisition]\npixel_size_nm = -3\n", "acquisition.pixel_size_nm", "greater than 0"),
        ("[acquisition]\npixel_size = 3\n", "acquisition.pixel_size", "unknown key"),
        ("[phases]\nnames = ['a']\n", "phases", "2 to 4"),
        ("[phases]\nroles = {active = 'nmc'}\n", "phases", "not in"),
        ("[processing]\nroi = [10, 5, 0, 4]\n", "processing.roi", "y0 < y1"),
        ("[publish]\nendpoint = '127.0.0.1:5556'\n", "publish.endpoint", "ZeroMQ endpoint"),
        ("[analysis]\ntransport_axis = 'w'\n", "analysis.transport_axis", "'y'"),
        ("[processing]\ncurtain_reference = 'rows'\n", "processing.curtain_reference", "'auto'"),
    ],
)
def test_bad_values_are_refused_with_key_value_and_expectation(tmp_path, text, key, fragment):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert key in message
    assert fragment in message


def test_unreadable_files_are_refused_clearly(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[rev\ntolerance = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["tolerance=0.1"])
