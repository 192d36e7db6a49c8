"""Configs are validated at start with one line naming the key; the CLI never half-runs."""
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from data.errors import ConfigError
from pipeline.cli import main
from pipeline.generate import GenerateConfig
from runner.config import load_config

GOOD = """
input: {paths: [corpus.jsonl]}
prompt: {template: "Q: {{ text }}"}
engine: {kind: hf, model: /nowhere}
output: out
"""


def _config(tmp_path, text=GOOD):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_the_generate_example_config_validates():
    config = load_config(GenerateConfig, REPO_ROOT / "configs" / "generate-example.yaml")
    assert config.engine.kind == "vllm" and config.sampling.max_tokens > 0


def test_overrides_are_parsed_as_yaml(tmp_path):
    config = load_config(GenerateConfig, _config(tmp_path), ["sampling.temperature=0.6", "sampling.stop=['##']", "engine.batch_size=4"])
    assert config.sampling.temperature == 0.6 and config.sampling.stop == ("##",) and config.engine.batch_size == 4


@pytest.mark.parametrize(
    "override, message",
    [
        ("sampling.temperature=-1", r"run\.yaml: sampling\.temperature: Input should be greater than or equal to 0 \(got -1\)"),
        ("engine.kind=vlm", r"run\.yaml: engine: Input tag 'vlm' found using 'kind' does not match"),
        ("engine.dtyp=float32", r"run\.yaml: engine\.dtyp: unknown key"),
        ("input.policy=ignore", r"run\.yaml: input\.policy: Input should be 'fail' or 'skip' \(got 'ignore'\)"),
        ("engine.batch_size=zero", r"run\.yaml: engine\.batch_size: .* \(got 'zero'\)"),
    ],
)
def test_a_bad_value_names_the_key_in_one_line(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(GenerateConfig, _config(tmp_path), [override])
    assert "\n" not in str(err.value)


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"run\.yaml:[34]: invalid YAML"):
        load_config(GenerateConfig, _config(tmp_path, "input: {paths: [a]}\nprompt:\n  template: [unclosed\n"))


def test_cli_prints_one_line_and_exits_2_on_a_bad_config(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "generate", "--config", str(_config(tmp_path)), "--set", "sampling.n=0"],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"mathsynth generate: error: {tmp_path / 'run.yaml'}: sampling.n: Input should be greater than or equal to 1 (got 0)"
    ]
    assert not (tmp_path / "out").exists()  # nothing written before validation passed


def test_a_missing_config_file_is_one_line_and_exit_2(capsys):
    assert main(["pretrain", "--config", "x.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mathsynth pretrain: error: ") and "x.yaml" in err[0]


def test_python_dash_m_stage_works_like_the_cli():
    result = subprocess.run([sys.executable, "-m", "pretrain"], capture_output=True, text=True)
    assert result.returncode == 2 and "the following arguments are required: --config" in result.stderr


def test_a_partial_override_keeps_the_other_eval_sampling_defaults():
    from eval.run import EvalConfig

    config = validate_eval({"benchmarks": "gsm8k", "engine": {"kind": "hf", "model": "m"}, "output": "o",
                            "sampling": {"max_tokens": 16}})
    assert config.sampling.max_tokens == 16 and config.sampling.temperature == 0.0 and config.sampling.seed == 0
    assert config.benchmarks == ["gsm8k"] and isinstance(config, EvalConfig)


def validate_eval(raw):
    from eval.run import EvalConfig
    from runner.config import validate

    return validate(EvalConfig, raw)
