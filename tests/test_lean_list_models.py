"""list_models never loads a model, so its cold start pays for no engine, numpy or Pillow."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("numpy", "PIL", "onnxruntime", "onnx", "torch")


def imported_after_loading(function: str, tmp_path: Path) -> set[str]:
    code = (f"import sys, json; sys.path.insert(0, {str(REPO / 'functions' / function)!r}); import main; "
            f"print(json.dumps([name for name in {HEAVY!r} if name in sys.modules]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                            env={"MODEL_STORE": str(tmp_path), "PRELOAD_DEFAULT_MODEL": "false", "PATH": ""},
                            cwd=REPO)
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


def test_the_list_models_function_imports_no_engine_numpy_or_pillow(tmp_path):
    assert imported_after_loading("list_models", tmp_path) == set()


def test_the_classify_function_imports_no_torch(tmp_path):
    assert "torch" not in imported_after_loading("classify", tmp_path)
