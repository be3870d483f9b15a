"""The house rules of docs/architecture.md, checked on the source: imports flow downward, no library
module reads an args object or imports the command layer, and `import dpr_paddle` changes nothing."""
import ast
import os
import subprocess
import sys

from conftest import ROOT

PKG = os.path.join(ROOT, "dpr_paddle")
# what each folder may import from (besides itself); the top level (the commands) may import anything
ALLOWED = {
    "common": set(),
    "data": {"common"},
    "modeling": {"common", "data"},
    "index": {"common"},
    "training": {"common", "data", "modeling"},
    "encoding": {"common", "data", "modeling", "index"},
    "retrieval": {"common", "data", "modeling", "index", "encoding"},
    "serving": {"common", "data", "modeling", "index", "encoding", "retrieval"},
}


def library_modules():
    for folder in ALLOWED:
        for name in sorted(os.listdir(os.path.join(PKG, folder))):
            if name.endswith(".py"):
                yield folder, os.path.join(PKG, folder, name)


def imported_folders(path, folder):
    """(line, folder or top-level module) of every dpr_paddle import in a module of `folder`."""
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "dpr_paddle":
                    continue
                target = parts[1:]
            else:
                base = [folder][: max(0, 1 - (node.level - 1))]
                target = base + (node.module.split(".") if node.module else [])
            if target:
                yield node.lineno, target[0]
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("dpr_paddle."):
                    yield node.lineno, a.name.split(".")[1]


def test_imports_flow_downward_and_never_reach_the_commands():
    wrong = []
    for folder, path in library_modules():
        for line, target in imported_folders(path, folder):
            if target != folder and target not in ALLOWED[folder]:
                wrong.append(f"{os.path.relpath(path, ROOT)}:{line} imports {target}")
    assert wrong == []


def test_no_library_function_takes_an_args_object_and_none_parses_flags():
    found = []
    for _, path in library_modules():
        tree = ast.parse(open(path, encoding="utf-8").read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names = [a.arg for a in node.args.args + node.args.kwonlyargs]
                if "args" in names or node.name == "main":
                    found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name}")
            if isinstance(node, ast.Attribute) and node.attr == "ArgumentParser":
                found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} ArgumentParser")
    assert found == []


def test_functions_stay_short():
    long = []
    for dirpath, _, files in os.walk(PKG):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                        long.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name}")
    assert long == []


def test_importing_the_package_changes_nothing_in_the_process():
    code = ("import os, sys; env = dict(os.environ); err = sys.stderr\n"
            "import dpr_paddle; from dpr_paddle import Retriever\n"
            "assert dict(os.environ) == env, 'environment changed'\n"
            "assert sys.stderr is err, 'stderr replaced'\n"
            "assert 'paddle' not in sys.modules, 'paddle imported'\n"
            "print('clean')")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_DEBUG_CPU_TYPE")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd="/")
    assert proc.returncode == 0 and proc.stdout.strip() == "clean", proc.stderr[-2000:]


def test_commands_parse_their_flags_before_paddle_loads():
    """The CPU defaults only work if they are set before paddle's first import: importing a command
    and its flags must not import paddle."""
    code = ("import sys\n"
            "import dpr_paddle.flags, dpr_paddle.cli\n"
            "for m in ('train', 'encode', 'retrieve', 'mine', 'reduce', 'search', 'serve', 'passage_store',\n"
            "          'evaluation', 'pretrained', 'tokenization', 'milvus_server'):\n"
            "    __import__('dpr_paddle.' + m)\n"
            "print(sorted(m for m in ('paddle', 'paddlenlp') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]


def test_every_file_the_package_reads_is_in_its_wheel():
    """A non-Python file inside dpr_paddle/ (the search page, the C++ kernels' sources) reaches a `pip install .`
    only when pyproject.toml's package-data names it; the wheel once shipped without the kernels' sources."""
    import fnmatch
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        data = tomllib.load(f)["tool"]["setuptools"]["package-data"]
    tracked = subprocess.run(["git", "ls-files", "dpr_paddle"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    missing = []
    for path in tracked:
        if path.endswith(".py"):
            continue
        folder, name = os.path.split(path)
        if not any(fnmatch.fnmatch(name, pattern) for pattern in data.get(folder.replace("/", "."), [])):
            missing.append(path)
    assert missing == []
