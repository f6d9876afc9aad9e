import pytest
import yaml

from sdd.config import load_params

from conftest import REPO


def write(tmp_path, mutate):
    data = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_repository_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.base_model.source.startswith("bundled:")
    assert set(params.datasets) >= {"gsm8k", "alpaca"}


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    path = write(tmp_path, lambda d: d["prepare"].update(max_rejected_fractoin=0.1))
    with pytest.raises(ValueError) as err:
        load_params(path)
    msg = str(err.value)
    assert "prepare.max_rejected_fractoin: unknown key" in msg
    assert "did you mean 'max_rejected_fraction'" in msg


def test_wrong_type_names_the_key(tmp_path):
    path = write(tmp_path, lambda d: d["datasets"]["gsm8k"].update(limit="many"))
    with pytest.raises(ValueError, match=r"datasets\.gsm8k\.limit: .*integer.*'many'"):
        load_params(path)


def test_out_of_range_names_the_key(tmp_path):
    path = write(tmp_path, lambda d: d["prepare"].update(max_rejected_fraction=1.5))
    with pytest.raises(ValueError, match=r"prepare\.max_rejected_fraction: Input should be less than or equal to 1"):
        load_params(path)


def test_all_problems_reported_at_once(tmp_path):
    def mutate(d):
        d["prepare"]["max_chars"] = 0
        d["datasets"]["alpaca"]["format"] = "alpacca"
        d["base_model"]["dtype"] = "int8"

    with pytest.raises(ValueError) as err:
        load_params(write(tmp_path, mutate))
    msg = str(err.value)
    assert "3 invalid value(s)" in msg
    for key in ("prepare.max_chars", "datasets.alpaca.format", "base_model.dtype"):
        assert key in msg


def test_bad_mirror_path_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SDD_DATA_MIRROR", str(tmp_path / "nowhere"))
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ValueError, match="SDD_DATA_MIRROR points to .*nowhere.*not a directory"):
        params.mirror()


def test_unknown_dataset_name_suggests(tmp_path):
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ValueError, match="did you mean 'gsm8k'"):
        params.dataset("gsm8j")


def test_launch_prefixes_template_into_the_heavy_stages_commands(tmp_path):
    import yaml
    from dvc.repo import Repo

    from conftest import copy_repo

    repo = copy_repo(tmp_path / "repo")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["launch"].update(distill="srun --gres=gpu:8 -- ", evaluate="sbatch --wait --gres=gpu:1 --wrap ")
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmds = {s.addressing.rsplit(":", 1)[-1]: s.cmd for s in Repo(str(repo)).index.stages}
    assert cmds["distill@gsm8k"] == "srun --gres=gpu:8 -- python -m stages.distill gsm8k"
    assert cmds["evaluate_arm@sdd"] == "sbatch --wait --gres=gpu:1 --wrap python -m stages.evaluate sdd --arm"
    assert cmds["finetune@sft"] == "python -m stages.finetune sft"  # "" runs here, with no leading space
    assert cmds["report"] == "python -m stages.report"  # cheap stages always run here


def test_a_launch_prefix_ends_with_a_space():
    from sdd.config.launch import LaunchParams

    with pytest.raises(ValueError, match="must end with a space"):
        LaunchParams(distill="srun --")
    assert LaunchParams(distill="srun -- ").distill == "srun -- "


def test_a_launch_prefix_is_one_command():
    from sdd.config.launch import LaunchParams

    with pytest.raises(ValueError, match="one command"):
        LaunchParams(distill="srun -- ; rm -rf / ")
