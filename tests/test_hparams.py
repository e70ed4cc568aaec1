"""Hyperparameters as SageMaker sends them."""

import subprocess
import sys
from pathlib import Path

import pytest

from casting.config import Config
from casting.hparams import HyperparameterError, SPECS, parse_hyperparameters

ROOT = Path(__file__).resolve().parents[1]


def test_both_spellings_and_equals_form():
    a = parse_hyperparameters(["--learning-rate", "0.02", "--steps_per_epoch", "7"])
    b = parse_hyperparameters(["--learning_rate=0.02", "--steps-per-epoch=7"])
    assert a.learning_rate == b.learning_rate == 0.02
    assert a.steps_per_epoch == b.steps_per_epoch == 7
    assert a.given == b.given == {"learning_rate", "steps_per_epoch"}


def test_json_encoded_strings_bools_numbers_and_reprs():
    hp = parse_hyperparameters([
        "--learning_rate", '"0.01"',  # notebook json.dumps of a string
        "--epochs", '"\\"3\\""',  # encoded twice
        "--batch-size", "2.0",
        "--augment", "False",
        "--resume", "True",
        "--schedule", '[{"epochs": 2, "layers": "heads", "lr": 0.001}, {"epochs": 1}]',
        "--config", "{'detection_min_confidence': 0.5, 'train_bn': False}",  # str(dict)
        "--class-names", "['disk', 'holes']",
        "--init-weights", '"none"',
    ])
    assert hp.learning_rate == 0.01 and isinstance(hp.learning_rate, float)
    assert hp.epochs == 3 and hp.batch_size == 2 and isinstance(hp.batch_size, int)
    assert hp.augment is False and hp.resume is True
    assert hp.schedule == [{"epochs": 2, "layers": "heads", "lr": 0.001}, {"epochs": 1}]
    assert hp.config == {"detection_min_confidence": 0.5, "train_bn": False}
    assert hp.class_names == ["disk", "holes"]
    assert hp.init_weights == "none"
    cfg = Config(**{**Config().to_dict(), **hp.config_overrides()})
    assert cfg.epochs == 3 and cfg.augment is False and len(cfg.schedule) == 2
    assert cfg.class_names == ("disk", "holes") and cfg.detection_min_confidence == 0.5


def test_objects_in_the_toolkits_key_value_form():
    """A JSON object hyperparameter reaches the script as the toolkit prints it:
    ``k1=v1,k2=v2`` with each value as Python prints it (sagemaker_training.mapping)."""
    hp = parse_hyperparameters([
        "--config", "detection_min_confidence=0.5,train_bn=False",
        "--policy", "classes={'holes': {'min_score': 0.6}, 'chipping': []},require_part=True",
    ])
    assert hp.config == {"detection_min_confidence": 0.5, "train_bn": False}
    assert hp.policy == {"classes": {"holes": {"min_score": 0.6}, "chipping": []},
                         "require_part": True}
    assert parse_hyperparameters(["--policy", "/opt/ml/input/data/policy/p.json"]).policy == (
        "/opt/ml/input/data/policy/p.json")


def test_schedule_as_python_repr_and_comma_names():
    hp = parse_hyperparameters(["--schedule", "[{'epochs': 1, 'layers': 'all'}]",
                                "--class_names", "a, b,c"])
    assert hp.schedule == [{"epochs": 1, "layers": "all"}]
    assert hp.class_names == ["a", "b", "c"]


def test_defaults_and_only_given_fields_override_config():
    hp = parse_hyperparameters([])
    assert hp.init_weights == "imagenet" and hp.resume is True and hp.val_fraction == 0.2
    assert hp.config_overrides() == {}
    hp = parse_hyperparameters(["--config", '{"epochs": 5, "seed": 1}', "--epochs", "2"])
    assert hp.config_overrides() == {"epochs": 2, "seed": 1}  # explicit flag wins


def test_unknown_name_lists_valid_names():
    with pytest.raises(HyperparameterError) as err:
        parse_hyperparameters(["--learning-rat", "0.1"])
    text = str(err.value)
    assert "--learning-rat" in text and "learning_rate" in text and "steps_per_epoch" in text


@pytest.mark.parametrize("argv, flag", [
    (["--epochs", "two"], "--epochs"),
    (["--epochs", "2.5"], "--epochs"),
    (["--augment", "maybe"], "--augment"),
    (["--schedule", "{oops"], "--schedule"),
    (["--config", "[1, 2]"], "--config"),
    (["--learning-rate", "nan"], "--learning-rate"),
])
def test_bad_values_name_the_option(argv, flag):
    with pytest.raises(HyperparameterError, match=flag):
        parse_hyperparameters(argv)


def test_help_documents_every_hyperparameter():
    out = subprocess.run([sys.executable, str(ROOT / "train.py"), "--help"],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for spec in SPECS:
        assert f"--{spec.name.replace('_', '-')}" in out.stdout
        assert spec.help.split()[0] in out.stdout


def test_scale_learning_rate_reaches_the_config_and_the_plan():
    from casting.config import Config
    from casting.training import Plan

    hp = parse_hyperparameters(["--scale_learning_rate", '"True"', "--learning-rate", "0.01"])
    config = Config().replace(**hp.config_overrides())
    assert config.scale_learning_rate is True
    assert Config.from_json(config.to_json()).scale_learning_rate is True
    plan = Plan.from_config(config.replace(schedule=({"epochs": 1, "lr": 0.02},
                                                     {"epochs": 1})), lr_scale=4)
    assert [s.lr for s in plan.stages] == [pytest.approx(0.08), pytest.approx(0.04)]
    assert Config().scale_learning_rate is False


def test_scale_range_and_crop_size_as_sagemaker_sends_them():
    for raw in ('"[0.5, 1.0]"', "0.5,1.0", "[0.5, 1]"):
        hp = parse_hyperparameters(["--train-scale-range", raw, "--train_crop_size", '"512"',
                                    "--image-size", "1024"])
        cfg = Config().replace(**hp.config_overrides())
        assert cfg.train_scale_range == (0.5, 1.0) and cfg.train_crop_size == 512
    with pytest.raises(HyperparameterError, match="--train-scale-range"):
        parse_hyperparameters(["--train-scale-range", "[0.5]"])
