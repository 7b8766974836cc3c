"""What produced a run (recorder.provenance): a recording made from a script in a git work tree with
an uncommitted change stores the commit, the dirty flag and the diff's hash, with the command,
numerics settings, packages, hardware and capture path; ``tracefmt info`` shows them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import recorder
import tracefmt
from recorder.provenance import (
    _without_credentials,
    code_provenance,
    numerics_provenance,
    package_versions,
)
from tracefmt.cli_info import info_cmd

_GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.org",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.org",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, **_GIT_ENV, "HOME": str(repo)}
    done = subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)
    return done.stdout.decode().strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git work tree holding ``train.py``, committed on branch ``exp``, then changed."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q", "-b", "exp")
    (root / "train.py").write_text("lr = 0.1\n")
    _git(root, "add", "train.py")
    _git(root, "commit", "-q", "-m", "first")
    (root / "train.py").write_text("lr = 0.2\n")  # the uncommitted change
    return root


def test_a_recording_from_a_changed_work_tree_stores_commit_dirty_and_diff(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", [str(repo / "train.py"), "--lr", "0.2"])
    monkeypatch.chdir(tmp_path)  # the script's work tree counts, not the working directory
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    monkeypatch.setenv("PYTORCH_TEST_SECRET_TOKEN", "hunter2")
    net = torch.nn.Linear(3, 2)
    with recorder.record(tmp_path / "run", overwrite=True, engine="python") as rec:
        net(torch.ones(2, 3)).sum().backward()
        rec.step()
    with tracefmt.open(tmp_path / "run") as trace:
        extra = trace.provenance.extra
    code = extra["code"]
    assert code["commit"] == _git(repo, "rev-parse", "HEAD")
    assert (code["branch"], code["dirty"], code["script"]) == ("exp", True, "train.py")
    assert len(code["diff_sha256"]) == 64
    assert extra["command"]["argv"] == [str(repo / "train.py"), "--lr", "0.2"]
    assert extra["command"]["cwd"] == str(tmp_path)
    env = extra["numerics"]["env"]
    assert env["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert "PYTORCH_TEST_SECRET_TOKEN" not in env
    assert extra["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert extra["hardware"]["cpu_count"] == os.cpu_count()
    assert extra["capture"]["engine"] == extra["recorder_engine"]
    assert extra["capture"]["mode"] == "record"

    shown = CliRunner().invoke(info_cmd, [str(tmp_path / "run")])
    assert shown.exit_code == 0, shown.output
    assert code["commit"][:12] in shown.output
    assert "dirty" in shown.output
    data = json.loads(CliRunner().invoke(info_cmd, [str(tmp_path / "run"), "--json"]).output)
    assert data["provenance"]["code"] == code
    assert data["provenance"]["packages"] == extra["packages"]


def test_the_diff_hash_follows_the_change(repo: Path) -> None:
    first = code_provenance(repo)
    assert first is not None
    assert first["dirty"]
    (repo / "train.py").write_text("lr = 0.3\n")
    second = code_provenance(repo)
    assert second is not None
    assert second["diff_sha256"] != first["diff_sha256"]
    (repo / "train.py").write_text("lr = 0.2\n")
    again = code_provenance(repo)
    assert again is not None
    assert again["diff_sha256"] == first["diff_sha256"]
    (repo / "train.py").write_text("lr = 0.1\n")  # back to the commit
    clean = code_provenance(repo)
    assert clean is not None
    assert (clean["dirty"], clean["diff_sha256"]) == (False, None)


def test_outside_a_work_tree_there_is_no_code_provenance(tmp_path: Path) -> None:
    assert code_provenance(tmp_path) is None


def test_numerics_env_keeps_the_variables_that_change_numerics_only() -> None:
    env = {
        "CUBLAS_WORKSPACE_CONFIG": ":16:8",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
        "NCCL_ALGO": "Ring",
        "NCCL_SOCKET_IFNAME": "eth0",
        "OMP_NUM_THREADS": "4",
        "HOME": "/root",
        "TORCH_HUB_API_KEY": "x",
    }
    got = numerics_provenance(env)["env"]
    assert got == {
        "CUBLAS_WORKSPACE_CONFIG": ":16:8",
        "NCCL_ALGO": "Ring",
        "OMP_NUM_THREADS": "4",
        "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    }


def test_packages_and_remote_urls() -> None:
    packages = package_versions()
    assert "numpy" in packages
    assert "h5py" in packages
    assert list(packages) == sorted(packages, key=str.lower)
    url = "https://user:tok3n@github.com/o/r.git"
    assert _without_credentials(url) == "https://github.com/o/r.git"
    assert _without_credentials("git@github.com:o/r.git") == "git@github.com:o/r.git"


def test_secret_option_values_are_left_out_of_the_command_line() -> None:
    from recorder.provenance import REDACTED, redacted_argv

    argv = ["train.py", "--hf-token=abc", "--api-key", "xyz", "--lr", "0.1"]
    argv += ["--password", "--steps", "5"]
    assert redacted_argv(argv) == [
        "train.py", f"--hf-token={REDACTED}", "--api-key", REDACTED, "--lr", "0.1",
        "--password", "--steps", "5",
    ]  # fmt: skip
