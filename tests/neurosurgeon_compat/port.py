"""Port NeuroSurgeon's test files: change the import prefix, read hub stand-ins offline.

Run once per NeuroSurgeon release (not a test):
``python tests/neurosurgeon_compat/port.py SRC_ROOT`` where ``SRC_ROOT/NeuroSurgeon`` is
NeuroSurgeon's package (the 0.1.0 wheel unpacked, or its repository). Writes
``tests/neurosurgeon_compat/test_ns_<sub>_<name>.py``; the test bodies are not touched.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PREFIX = "modeopt_masks.compat.neurosurgeon"
FILES = {
    "Masking/test/test_contsparse.py": "masking_contsparse",
    "Masking/test/test_hardconcrete.py": "masking_hardconcrete",
    "Masking/test/test_magprune.py": "masking_magprune",
    "Models/test/test_circuit_model_bert.py": "models_circuit_model_bert",
    "Models/test/test_other_models.py": "models_other_models",
    "Probing/test/test_residual_update_model.py": "probing_residual_update_model",
    "Probing/test/test_subnetwork_probe.py": "probing_subnetwork_probe",
    "Probing/test/test_circuit_probe.py": "probing_circuit_probe",
}
#: NeuroSurgeon's documented modules (its API pages autodoc them with all members)
API_MODULES = [
    "Masking/mask_layer.py", "Masking/contsparse_layer.py", "Masking/hardconcrete_layer.py",
    "Masking/magprune_layer.py", "Models/circuit_model.py", "Models/model_configs.py",
    "Probing/probe_configs.py", "Probing/residual_update_model.py",
    "Probing/subnetwork_probe.py", "Probing/circuit_probe.py",
]
HEADER = (
    "# ruff: noqa\n"  # NeuroSurgeon's code, kept as it is
    '"""Ported from NeuroSurgeon ({src}): imports changed only (see port.py)."""\n\n'
)


def port(text: str, sub: str) -> str:
    text = re.sub(r"^from \.\.\.", f"from {PREFIX}.", text, flags=re.M)
    text = re.sub(r"^from \.\.(?!\.)", f"from {PREFIX}.{sub}.", text, flags=re.M)
    text = re.sub(r"^from transformers import", "from neurosurgeon_compat.ns_offline import", text, flags=re.M)
    text = re.sub(r"^from datasets import", "from neurosurgeon_compat.ns_offline import", text, flags=re.M)
    return text


def api(root: str) -> dict:
    """``{module: {class: {"members": [...], "signatures": {method: [[name, default]]}}}}``."""
    import ast

    out: dict = {}
    for rel in API_MODULES:
        src = Path(root) / "NeuroSurgeon" / rel
        if not src.exists():
            continue
        module = rel[:-3].replace("/", ".")
        for node in ast.parse(src.read_text()).body:
            if not isinstance(node, ast.ClassDef) or node.name.startswith("_"):
                continue
            members, signatures = [], {}
            for item in node.body:
                if not isinstance(item, ast.FunctionDef):
                    continue
                if not item.name.startswith("_"):
                    members.append(item.name)
                if item.name in ("__init__", "from_layer"):
                    args = [a.arg for a in item.args.args][1:]
                    defaults = [ast.unparse(d) for d in item.args.defaults]
                    pad = [None] * (len(args) - len(defaults))
                    signatures[item.name] = [[a, d] for a, d in zip(args, pad + defaults, strict=True)]
            out.setdefault(module, {})[node.name] = {
                "members": sorted(set(members)), "signatures": signatures}
    return out


def main(root: str) -> None:
    import json

    out_dir = Path(__file__).parent
    api_file = out_dir / "ns_api.json"
    surface = json.loads(api_file.read_text()) if api_file.exists() else {}
    for module, classes in api(root).items():
        surface.setdefault(module, {}).update(classes)
    api_file.write_text(json.dumps(surface, indent=1, sort_keys=True) + "\n")
    for rel, name in FILES.items():
        src = Path(root) / "NeuroSurgeon" / rel
        if not src.exists():
            print(f"skip {rel} (not in {root})")
            continue
        sub = rel.split("/")[0]
        target = out_dir / f"test_ns_{name}.py"
        target.write_text(HEADER.format(src=f"NeuroSurgeon/{rel}") + port(src.read_text(), sub))
        print(f"{rel} -> {target.name}")


if __name__ == "__main__":
    main(sys.argv[1])
