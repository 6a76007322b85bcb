"""Options naming a sub-folder (``health.healthy_checkpoints.dirname``) are refused when they would
point the folder's pruning at its parent or elsewhere on disk."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from ssrl_trl.health import HealthyCheckpoints, build_health_callbacks
from ssrl_trl.paths import check_subfolder, inside

OPTION = "health.healthy_checkpoints.dirname"


@pytest.mark.parametrize(
    "bad", ["", "   ", ".", "./", "..", "../elsewhere", "a/../..", "a/..", "/tmp/x", "~/x"]
)
def test_names_that_are_not_a_sub_folder_are_refused_with_the_option_named(bad):
    with pytest.raises(ValueError, match=OPTION.replace(".", r"\.")):
        HealthyCheckpoints(dirname=bad)
    with pytest.raises(ValueError, match=OPTION.replace(".", r"\.")):
        build_health_callbacks({"healthy_checkpoints": {"dirname": bad}})


@pytest.mark.parametrize("good", ["healthy", "kept/healthy", "./healthy", "a/../healthy"])
def test_sub_folder_names_are_accepted(good):
    assert HealthyCheckpoints(dirname=good).dirname == good
    assert check_subfolder("x", good) == good


def test_a_non_string_name_is_refused():
    with pytest.raises(ValueError, match="must be a folder name"):
        check_subfolder(OPTION, 3)


def _save(cb, out, step=1):
    folder = out / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"w")
    cb.on_save(
        SimpleNamespace(output_dir=str(out)),
        SimpleNamespace(global_step=step, is_world_process_zero=True),
        None,
    )
    return folder


def test_a_symbolic_link_out_of_output_dir_is_not_pruned(tmp_path, capsys):
    out, outside = tmp_path / "run", tmp_path / "precious"
    outside.mkdir()
    (outside / "checkpoint-1").mkdir()
    (outside / "checkpoint-1" / "keep.txt").write_text("mine")
    out.mkdir()
    os.symlink(outside, out / "healthy")
    cb = HealthyCheckpoints(keep=1)
    source = _save(cb, out)
    assert (outside / "checkpoint-1" / "keep.txt").read_text() == "mine" and source.is_dir()
    assert "is outside" in capsys.readouterr().out
    assert not inside(out, out) and inside(out, out / "a" / "b")


def test_the_default_keeps_a_copy_and_leaves_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    source = _save(HealthyCheckpoints(keep=1), out)
    assert (source / "model.safetensors").is_file() and (out / "healthy" / "checkpoint-1").is_dir()
