"""The codebase's shape, as README's layout section states it: imports point down a fixed
staircase of layers, no stage script imports another, every dependency is visible at the top
of its file, and no file grows far past ~500 lines."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Lower layers first; a module may import only from layers below its own. The stage scripts
# sit on top and are imported by nothing in the product (tests and benchmarks may run them).
LAYERS = [
    ["common", "sandbox", "data.dedup", "data.filters", "kernels.precision", "kernels.twins",
     "kernels.triton_cross_entropy", "kernels.triton_rmsnorm", "kernels.triton_swiglu"],
    ["kernels.triton_attention", "kernels.triton_linear_cross_entropy", "kernels.triton_matmul", "redteam"],
    ["tokenizer", "kernels", "training", "benchmarks", "gate", "tasks", "data.sources", "data.report", "rlhf"],
    ["model", "data.contamination", "rankings", "judge"],
    ["demos", "measure", "report_card", "preferences"],
    ["safety"],
    ["data.prepare", "bpe", "train", "sft", "chat", "rate", "reward", "ppo", "evaluate", "sample"],     # the stages
]
STAGES = set(LAYERS[-1])
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}
# Imports inside a function, each with its reason: Triton is optional on a CPU, so the kernels
# load on first use; kernel modules may import their siblings below them.
LAZY_ALLOWED = {("kernels", "kernels.triton_attention"), ("kernels", "kernels.triton_cross_entropy"),
                ("kernels", "kernels.triton_linear_cross_entropy"), ("kernels", "kernels.triton_rmsnorm"),
                ("kernels", "kernels.triton_swiglu")}


def product_modules():
    files = [*ROOT.glob("*.py"), *ROOT.glob("data/*.py"), *ROOT.glob("kernels/*.py")]
    mods = {}
    for f in files:
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    mods.pop("data", None)                                     # the empty package marker
    return mods


def project_imports(path, known):
    """(imported project module, imported at the top level?) for every import in a file."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name in known:
                found.append((name, id(node) in top))
    return found


def test_every_product_module_has_a_layer():
    assert set(product_modules()) == set(LAYER), "add the new module to LAYERS (and to README's layout section)"


def test_imports_point_down_and_no_stage_imports_another():
    mods = product_modules()
    wrong = []
    for name, path in mods.items():
        for target, at_top in project_imports(path, mods):
            if target == name:
                continue
            if target in STAGES:
                wrong.append(f"{name} imports the stage script {target}")
            elif LAYER[target] >= LAYER[name] and not (name == "kernels" and target.startswith("kernels.")):
                wrong.append(f"{name} (layer {LAYER[name]}) imports {target} (layer {LAYER[target]})")
            if not at_top and (name, target) not in LAZY_ALLOWED:
                wrong.append(f"{name} imports {target} inside a function: lift it to the top")
    assert not wrong, "; ".join(wrong)


def test_no_file_grows_far_past_500_lines():
    long = {name: n for name, path in product_modules().items()
            if (n := len(path.read_text().splitlines())) > 520}
    assert not long, f"split by what they hold: {long}"
