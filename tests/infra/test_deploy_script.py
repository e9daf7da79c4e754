"""Infrastructure, offline: deploy.sh: one copy of the settings, for the build and for people."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.support.infra import (
    TERRAFORM_DIR,
)


@pytest.fixture
def cloud_tools(tmp_path) -> dict:
    """Stand-ins for gcloud and terraform, which cannot reach Google Cloud from here.

    gcloud serves ``gs://BUCKET/PATH`` from a local directory; terraform records its arguments
    (with the content of every -var-file) and succeeds.
    """
    bin_dir, gcs, record = tmp_path / "bin", tmp_path / "gcs", tmp_path / "terraform-calls.jsonl"
    bin_dir.mkdir()
    gcs.mkdir()
    (bin_dir / "gcloud").write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import shutil, sys
        args = [a for a in sys.argv[1:] if a != "--quiet"]
        local = lambda uri: "{gcs}/" + uri.removeprefix("gs://")
        if args[:2] == ["storage", "cp"]:
            src, dst = args[2:4]
            try:
                shutil.copyfile(local(src) if src.startswith("gs://") else src,
                                local(dst) if dst.startswith("gs://") else dst)
            except FileNotFoundError:
                sys.exit("ERROR: (gcloud.storage.cp) The following URLs matched no objects or files: " + src)
        elif args[:2] == ["storage", "ls"]:
            import os
            sys.exit(0 if os.path.exists(local(args[2])) else 1)
        else:
            sys.exit("unexpected gcloud call: " + " ".join(args))
        """))
    (bin_dir / "terraform").write_text(textwrap.dedent(f"""\
        #!{sys.executable}
        import json, os, sys
        paths = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("-var-file=")]
        with open("{record}", "a") as out:
            call = {{"args": sys.argv[1:], "cwd": os.getcwd(), "var_files": [open(p).read() for p in paths]}}
            out.write(json.dumps(call) + "\\n")
        """))
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    return {"env": env, "gcs": gcs, "calls": lambda: [json.loads(line) for line in record.read_text().splitlines()]
            if record.exists() else []}


def run_deploy(tools: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(TERRAFORM_DIR / "deploy.sh"), *args], capture_output=True, text=True,
                          env=tools["env"], timeout=300)


def test_deploy_applies_the_settings_kept_next_to_the_state_and_the_builds_image(cloud_tools):
    state = cloud_tools["gcs"] / "my-tfstate" / "imgclassify"
    state.mkdir(parents=True)
    (state / "terraform.tfvars").write_text('project_id = "my-project"\nclassify = { min_instances = 1 }\n')
    (state / "build.tfvars").write_text('batch_image = "europe-west1-docker.pkg.dev/p/imgclassify/batch:b1"\n')
    result = run_deploy(cloud_tools, "my-tfstate", "imgclassify", "-auto-approve")
    assert result.returncode == 0, result.stdout + result.stderr
    init, apply = cloud_tools["calls"]()
    assert init["args"] == ["init", "-input=false", "-backend-config=bucket=my-tfstate",
                            "-backend-config=prefix=imgclassify"]
    assert apply["args"][:3] == ["apply", "-input=false", "-lock-timeout=30m"] and apply["args"][-1] == "-auto-approve"
    assert apply["var_files"] == [(state / "terraform.tfvars").read_text(), (state / "build.tfvars").read_text()]
    assert apply["cwd"] == str(TERRAFORM_DIR)
    assert not [arg for arg in apply["args"] if arg.startswith("-var=")]


def test_deploy_without_settings_in_the_state_bucket_stops_before_terraform(cloud_tools):
    (cloud_tools["gcs"] / "my-tfstate").mkdir()
    result = run_deploy(cloud_tools, "my-tfstate")
    assert result.returncode == 1
    assert "could not read gs://my-tfstate/imgclassify/terraform.tfvars" in result.stderr
    assert cloud_tools["calls"]() == []


def test_deploy_refuses_settings_that_only_this_machine_would_apply(cloud_tools):
    local = TERRAFORM_DIR / "zz-deploy-test.auto.tfvars"
    local.write_text("classify = { cpu = 4 }\n")
    try:
        result = run_deploy(cloud_tools, "my-tfstate")
    finally:
        local.unlink()
    assert result.returncode == 2
    assert "zz-deploy-test.auto.tfvars would be applied from this machine only" in result.stderr
    assert cloud_tools["calls"]() == []


