"""Build one self-contained, deployable source bundle per Cloud Function.

``gcloud functions deploy --source DIR`` and Terraform's source object upload only one
directory, so each bundle holds everything its function imports from this repository:

    build/functions/<name>/main.py            the entry point, from functions/<name>/
    build/functions/<name>/imgclassify/       the modules of the package the function imports
    build/functions/<name>/requirements.txt   exact pins from functions/requirements.txt
    build/functions/classify/model_snapshot/  a verified copy of the default model (with --store)
    build/functions/<name>.zip                the same files, zipped deterministically

The zip is byte-for-byte reproducible (sorted entries, fixed timestamps and permissions),
so Terraform names the uploaded object after its hash and a code change, and only a code
change, redeploys the function. Each bundle ships only its part of the package: the modules
its ``main.py`` and its app module (``APP_MODULES`` in imgclassify/serving/bootstrap.py) import,
followed through every import of the package (lazy ones included, ``TYPE_CHECKING`` ones
not), with the ``__init__.py`` of each subpackage on the way. Neither bundle holds the
publisher or the batch job; ``list_models`` holds no runtime or imaging module, and gets
the pins without the packages only inference needs (ONNX Runtime).
Neither bundle installs torch: every model is served from its ``model.onnx``.

With ``--store`` (``make bundles MODEL_STORE=gs://BUCKET``) the classify bundle also carries a
snapshot of the store's default model (``imgclassify/store/snapshot.py``): its manifest and the
files it serves, verified against their sha256, in the directory the MODEL_SNAPSHOT_DIR setting
names by default. An instance uses it instead of downloading only while the catalog's default is
still that version. A store that cannot be read stops the build (a bundle that silently lost
its snapshot would only start slower); ``--no-snapshot`` builds without one. A store with no
model published yet (a first deploy) gives a bundle without a snapshot and a warning.

With ``--terraform-vars FILE`` (deploy.sh passes the settings it applies) the snapshots follow the
deployments those settings describe: classify's is of the DEFAULT_MODEL its environment names
(else the catalog's default), and each ``dedicated_classify`` model gets a bundle of its own,
``classify-MODEL``, which is the classify bundle with a snapshot of that model; Terraform deploys
it where it exists and the classify bundle otherwise (no store, or the model is not published).
Every build of classify removes the ``classify-*`` bundles it did not build, so a bundle from an
earlier build of other code can never deploy.

The Makefile (``make bundles``) and Cloud Build both call this script; it needs only the
standard library. A ``gs://`` store is read with google-cloud-storage where the Python running
it has the library (the venv's), else with the gcloud CLI (Cloud Build's deploy step).
``--freeze`` rewrites functions/requirements.txt from the versions installed in the running
environment.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from imgclassify.errors import (  # noqa: E402 - standard library only
    ObjectNotFound,
    ServiceError,
    StorageUnavailable,
    UnknownModel,
)
from imgclassify.serving.routes import FUNCTIONS  # noqa: E402 - the one list of functions (standard library only)
from imgclassify.settings import declared  # noqa: E402 - standard library only
from imgclassify.store.objects import (  # noqa: E402 - standard library only (the client is imported on use)
    ObjectStore,
    StoredObject,
    open_store,
    split_gs_uri,
)
from imgclassify.store.snapshot import write_snapshot  # noqa: E402 - standard library only

PACKAGE = "imgclassify"
PINS_FILE = REPO / "functions" / "requirements.txt"
DEFAULT_OUT = REPO / "build" / "functions"
TERRAFORM_DIR = REPO / "infra" / "terraform"
# A dedicated deployment's own bundle is DEDICATED_PREFIX + its model (main.tf's local.dedicated).
DEDICATED_PREFIX = "classify-"

# Each classify deployment's default model as infra/terraform sets DEFAULT_MODEL (main.tf's
# local.dedicated, then functions.tf's function_environment, where the settings' own
# environment wins): the shared deployment's is the catalog's default unless its environment
# names one; a dedicated one's is its model unless its environment names another.
# tests/infra/test_deploy_script.py checks this against those locals.
# (One line: the console reads each line as an expression of its own.)
DEPLOYED_DEFAULTS = ('jsonencode({shared = lookup(var.classify.environment, "DEFAULT_MODEL", null), '
                     'dedicated = {for model, settings in var.dedicated_classify : '
                     'model => lookup(settings.environment, "DEFAULT_MODEL", model)}})')

# Packages only classify imports: model loading and inference (list_models never loads a model), and
# its request bodies' parsers (list_models takes no body).
CLASSIFY_ONLY = frozenset({"onnxruntime", "python-multipart", "pybase64"})

# 1980-01-01, the earliest time a zip entry can carry.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    """A distribution name as pip compares it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def runtime_dependencies(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The canonical names of ``[project].dependencies``, in their declared order."""
    with open(pyproject, "rb") as handle:
        declared = tomllib.load(handle)["project"]["dependencies"]
    return [canonical(_NAME.match(requirement).group(1)) for requirement in declared]


def read_pins(path: Path = PINS_FILE) -> tuple[list[str], dict[str, str]]:
    """(pip option lines, {canonical name: requirement line}) of the pins file."""
    options: list[str] = []
    pins: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith("-"):
            options.append(line)
        else:
            pins[canonical(_NAME.match(line).group(1))] = line
    return options, pins


def requirements_for(function: str, pins_file: Path = PINS_FILE) -> str:
    """The requirements.txt text of ``function``'s bundle."""
    options, pins = read_pins(pins_file)
    missing = [name for name in runtime_dependencies() if name not in pins]
    if missing:
        raise SystemExit(f"{pins_file} has no pin for {', '.join(missing)}; run {Path(__file__).name} --freeze")
    names = [name for name in pins if function == "classify" or name not in CLASSIFY_ONLY]
    lines = [f"# {function}: generated by scripts/build_bundles.py from functions/requirements.txt"]
    lines += options + [pins[name] for name in names]
    return "\n".join(lines) + "\n"


def module_path(module: str, root: Path = REPO) -> Path | None:
    """The source file of ``module`` (dotted, under ``root``), or None if it is not in the repository."""
    base = root.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and isinstance(test, ast.Name | ast.Attribute) and \
        (getattr(test, "id", None) or getattr(test, "attr", None)) == "TYPE_CHECKING"


def imported_modules(path: Path, module: str) -> set[str]:
    """The dotted names ``path`` (the source of ``module``) imports, relative imports resolved,
    imports inside functions included, those under ``if TYPE_CHECKING:`` left out."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    pending = list(ast.parse(path.read_text(), filename=str(path)).body)
    while pending:
        node = pending.pop()
        if _is_type_checking(node):
            pending.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
        pending.extend(ast.iter_child_nodes(node))
    return found


def app_module(function: str) -> str:
    """``APP_MODULES[function]`` of the bootstrap, read from its source (this script imports no werkzeug)."""
    tree = ast.parse((REPO / PACKAGE / "serving" / "bootstrap.py").read_text())
    for node in tree.body:
        targets = [getattr(target, "id", None) for target in getattr(node, "targets", ())]
        if isinstance(node, ast.Assign) and "APP_MODULES" in targets:
            return ast.literal_eval(node.value)[function]
    raise SystemExit("imgclassify/serving/bootstrap.py has no APP_MODULES table")


def package_files(function: str) -> list[Path]:
    """The package's sources ``function`` imports, sorted: its import closure from main.py and its app module."""
    entry = REPO / "functions" / function / "main.py"
    pending = sorted(imported_modules(entry, "main") | {app_module(function)})
    seen: set[str] = set()
    files: set[Path] = set()
    while pending:
        module = pending.pop()
        if module in seen or module.partition(".")[0] != PACKAGE:
            continue
        seen.add(module)
        parts = module.split(".")
        for depth in range(1, len(parts)):  # importing a.b.c runs a/__init__.py and a/b/__init__.py
            pending.append(".".join(parts[:depth]))
        path = module_path(module)
        if path is None:  # `from pkg import name` where name is not a module
            continue
        files.add(path)
        pending.extend(imported_modules(path, module))
    return sorted(files)


def write_deterministic_zip(source_dir: Path, zip_path: Path) -> None:
    """Zip ``source_dir`` so that the same files always give the same bytes."""
    files = sorted(path for path in source_dir.rglob("*") if path.is_file())
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in files:
            entry = zipfile.ZipInfo(path.relative_to(source_dir).as_posix(), date_time=_ZIP_EPOCH)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            entry.create_system = 3  # Unix, so the permissions above are read as such
            archive.writestr(entry, path.read_bytes(), compresslevel=9)


class GcloudStore(ObjectStore):
    """A read-only view of ``gs://bucket[/prefix]`` through the gcloud CLI, for a Python without
    the storage client (Cloud Build's cloud-sdk image, which runs deploy.sh): gcloud brings the
    deployer's credentials and its own retries. Enough for ``write_snapshot``, which only reads."""

    def __init__(self, location: str, gcloud: str = "gcloud") -> None:
        bucket, prefix = split_gs_uri(location)
        self.uri = f"gs://{bucket}/{prefix.strip('/')}".rstrip("/")
        self.gcloud = gcloud

    def read(self, name: str) -> StoredObject:
        uri = f"{self.uri}/{name}"
        done = subprocess.run([self.gcloud, "storage", "cat", uri], capture_output=True, timeout=900)
        if done.returncode == 0:
            return StoredObject(done.stdout, 0)  # generation unread: this store never writes
        said = " ".join(done.stderr.decode(errors="replace").split())
        if "matched no objects" in said:
            raise ObjectNotFound(f"{uri} does not exist")
        raise StorageUnavailable(f"gcloud storage cat {uri} failed: {said[-300:]}")

    def _reads_only(self, *args, **kwargs):
        raise NotImplementedError("the gcloud view of a store reads whole objects only")

    info = list = write = delete = _reads_only


def snapshot_source(store_location: str) -> tuple[ObjectStore, str]:
    """The store to take the snapshot from, and how it is read: the storage client where this
    Python has it (or for a directory), else the gcloud CLI for a ``gs://`` store."""
    if store_location.startswith("gs://"):
        try:
            import google.cloud.storage  # noqa: F401 - only whether it is there
        except ImportError:
            if shutil.which("gcloud") is None:
                raise SystemExit(f"cannot read {store_location}: this Python has no google-cloud-storage and "
                                 "there is no gcloud on PATH (run this script with the venv's Python, "
                                 "or build with --no-snapshot)") from None
            return GcloudStore(store_location), "read with gcloud, verified"
    return open_store(store_location), "verified"


@dataclass(frozen=True)
class Deployments:
    """The default models of the classify deployments some Terraform settings describe."""

    shared: str | None          # the shared classify's DEFAULT_MODEL; None: the catalog's default
    dedicated: dict[str, str]   # each dedicated model (its deployment) -> the model it serves by default


def deployments_from(var_files: list[Path], terraform: str = "terraform") -> Deployments:
    """What ``var_files`` deploy, as Terraform itself reads them: ``terraform console`` over a
    copy of variables.tf alone, which needs no provider, no state and no network, and runs
    every validation the apply would. SystemExit with Terraform's message if they are invalid."""
    if shutil.which(terraform) is None:
        raise SystemExit("--terraform-vars needs terraform on PATH")
    with tempfile.TemporaryDirectory(prefix="imgclassify-settings-") as workdir:
        shutil.copyfile(TERRAFORM_DIR / "variables.tf", Path(workdir) / "variables.tf")
        done = subprocess.run(
            [terraform, "console", "-no-color", *(f"-var-file={path.resolve()}" for path in var_files)],
            input=DEPLOYED_DEFAULTS, cwd=workdir, capture_output=True, text=True, timeout=120,
            # TF_DATA_DIR would point the console at the real module's backend and state.
            env={**{key: value for key, value in os.environ.items() if key != "TF_DATA_DIR"},
                 "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1"})
    # Settings that fail a validation still exit 0, with the errors on stderr.
    if done.returncode != 0 or re.search(r"^\W*Error: ", done.stderr, re.MULTILINE):
        raise SystemExit(f"cannot read the deployments from {', '.join(map(str, var_files))}:\n{done.stderr.strip()}")
    # The last line is the value, the JSON text as a quoted string; warnings may come before it.
    found = json.loads(json.loads(done.stdout.strip().splitlines()[-1]))
    return Deployments(found["shared"], found["dedicated"])


def add_snapshot(bundle: Path, store_location: str, default_model: str | None = None) -> str:
    """Write the store's default model into ``bundle``'s snapshot directory; say what was done.

    SystemExit when the store cannot be read; a store with nothing published gives no snapshot.
    """
    directory = bundle / declared("MODEL_SNAPSHOT_DIR").default
    store, how = snapshot_source(store_location)
    try:
        manifest = write_snapshot(store, directory, default_model)
    except UnknownModel as error:
        return f"warning: no model snapshot ({error.message}); instances download their default model"
    except ServiceError as error:  # storage unavailable, no credentials, forbidden, a corrupt file
        raise SystemExit(f"cannot take the model snapshot from {store_location}: {error.message}; "
                         "build with --no-snapshot to deploy without one") from None
    size = sum(path.stat().st_size for path in directory.iterdir())
    return f"model snapshot {manifest.name}@{manifest.version} from {store_location} ({size} bytes, {how})"


def build_bundle(function: str, out_dir: Path, snapshot_store: str | None = None,
                 default_model: str | None = None, say=print, name: str | None = None) -> Path:
    """Build ``out_dir/NAME/`` and ``out_dir/NAME.zip`` (NAME: ``name``, else ``function``);
    return the zip's path.

    With ``snapshot_store``, the classify bundle carries a snapshot of that store's default model
    (``default_model`` if given).
    """
    return zip_bundle(assemble_bundle(function, out_dir, snapshot_store, default_model, say, name))


def zip_bundle(bundle: Path) -> Path:
    """Write the bundle directory's zip beside it; return the zip's path."""
    zip_path = bundle.parent / f"{bundle.name}.zip"
    write_deterministic_zip(bundle, zip_path)
    return zip_path


def assemble_bundle(function: str, out_dir: Path, snapshot_store: str | None = None,
                    default_model: str | None = None, say=print, name: str | None = None) -> Path:
    """The directory ``out_dir/NAME/`` of :func:`build_bundle`, without its zip."""
    if function not in FUNCTIONS:
        raise SystemExit(f"unknown function {function!r}; expected one of {', '.join(FUNCTIONS)}")
    name = name or function
    bundle = out_dir / name
    if bundle.exists():
        shutil.rmtree(bundle)
    bundle.mkdir(parents=True)
    shutil.copyfile(REPO / "functions" / function / "main.py", bundle / "main.py")
    for source in package_files(function):
        target = bundle / PACKAGE / source.relative_to(REPO / PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    (bundle / "requirements.txt").write_text(requirements_for(function))
    if function == "classify" and snapshot_store:
        say(f"{name}: {add_snapshot(bundle, snapshot_store, default_model)}")
    return bundle


def build_dedicated_bundles(out_dir: Path, snapshot_store: str | None, dedicated: dict[str, str],
                            say=print) -> list[Path]:
    """The bundle of each dedicated deployment (model -> its default model) that can carry a
    snapshot of its default model; return their zips. First removes every dedicated bundle in
    ``out_dir``: Terraform deploys one wherever it finds it. A deployment without one (no
    store, or its model is not published) runs the classify bundle, which differs only by the
    snapshot."""
    for stale in out_dir.glob(f"{DEDICATED_PREFIX}*"):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    zips = []
    for deployment, model in sorted(dedicated.items()):
        name = DEDICATED_PREFIX + deployment
        if snapshot_store is None:
            say(f"{name}: runs the classify bundle (built without snapshots)")
            continue
        bundle = assemble_bundle("classify", out_dir, snapshot_store, model, say, name)
        if not (bundle / declared("MODEL_SNAPSHOT_DIR").default).is_dir():
            shutil.rmtree(bundle)  # before it is zipped: Terraform would deploy the zip
            say(f"{name}: runs the classify bundle (no snapshot of {model})")
            continue
        zips.append(zip_bundle(bundle))
    return zips


def freeze(path: Path = PINS_FILE) -> str:
    """Write the pins file from the installed versions of the runtime dependencies."""
    from importlib.metadata import version

    lines = [
        "# Exact versions the deployed functions install. scripts/build_bundles.py writes each bundle's",
        "# requirements.txt from this file (list_models without onnxruntime). No torch: every",
        "# model is served by ONNX Runtime. The batch image installs the same pins (batch/requirements.txt).",
        "# Regenerate from the current environment with: python scripts/build_bundles.py --freeze",
    ]
    lines += [f"{name}=={version(name)}" for name in runtime_dependencies()]
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("functions", nargs="*", default=list(FUNCTIONS), help="functions to bundle (default: all)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: build/functions)")
    parser.add_argument("--store", default=os.environ.get("MODEL_STORE") or None,
                        help="model store the classify bundle's snapshot of the default model comes from "
                             "(default: $MODEL_STORE; none: no snapshot)")
    parser.add_argument("--default-model", default=os.environ.get("DEFAULT_MODEL") or None,
                        help="the model to snapshot (default: $DEFAULT_MODEL, else the catalog's default; "
                             "with --terraform-vars, the settings choose)")
    parser.add_argument("--no-snapshot", action="store_true", help="build the classify bundle without a snapshot")
    parser.add_argument("--terraform-vars", type=Path, action="append", default=[], metavar="FILE",
                        help="the Terraform settings being deployed (repeatable): they choose classify's "
                             "snapshot (its DEFAULT_MODEL, not --default-model) and give each "
                             "dedicated_classify model a bundle with a snapshot of its own")
    parser.add_argument("--freeze", action="store_true", help="rewrite functions/requirements.txt and exit")
    args = parser.parse_args(argv)
    if args.freeze:
        print(freeze(), end="")
        return 0
    deployments = deployments_from(args.terraform_vars) if args.terraform_vars else Deployments(args.default_model, {})
    args.out.mkdir(parents=True, exist_ok=True)
    store = None if args.no_snapshot else args.store
    if store is None and "classify" in args.functions:
        print("classify: no model snapshot (no --store or MODEL_STORE); instances download their default model")
    for function in args.functions:
        zips = [build_bundle(function, args.out, store, deployments.shared)]
        if function == "classify":
            zips += build_dedicated_bundles(args.out, store, deployments.dedicated)
        for zip_path in zips:
            print(f"{zip_path.stem}: {zip_path} ({zip_path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
