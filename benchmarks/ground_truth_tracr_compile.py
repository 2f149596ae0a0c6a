"""Compile the Tracr programs ``reverse`` and ``frac_prevs`` and cache them as .npz fixtures.

Needs ``pip install tracr-pypi jax`` (CPU). Writes ``tests/fixtures/tracr_<name>.npz`` with
the compiled weights (haiku names, float32), the residual-space labels, the vocabulary
encoding, the unembedding and the compiled model's own outputs on every input of every
length (the fixtures let the tests and ``ground_truth_tracr.py`` run without jax). Each
fixture is a few tens of kB.

    python benchmarks/ground_truth_tracr_compile.py
"""

from __future__ import annotations

import itertools
import json
import pathlib

import numpy as np

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"
VOCAB = ("a", "b", "c")
MAX_LEN = 5


def programs():
    from tracr.compiler import lib
    from tracr.rasp import rasp

    return {
        "reverse": lib.make_reverse(rasp.tokens),
        "frac_prevs": lib.make_frac_prevs(rasp.tokens == "a"),
    }


def compile_one(name: str, program) -> pathlib.Path:
    from tracr.compiler import compiling

    model = compiling.compile_rasp_to_model(
        program, vocab=set(VOCAB), max_seq_len=MAX_LEN, compiler_bos="BOS"
    )
    labels = list(model.residual_labels)
    categorical = model.output_encoder is not None and bool(
        getattr(model.output_encoder, "encoding_map", None)
    )
    out_name = program.label
    if categorical:
        values = sorted(model.output_encoder.encoding_map, key=model.output_encoder.encoding_map.get)
        out_labels = [f"{out_name}:{v}" for v in values]
    else:
        values, out_labels = [], [out_name]
    unembed = np.zeros((len(out_labels), len(labels)), np.float32)
    for i, lab in enumerate(out_labels):
        unembed[i, labels.index(lab)] = 1.0
    arrays = {f"param/{mod}/{k}": np.asarray(v, np.float32)
              for mod, d in model.params.items() for k, v in d.items()}
    inputs, outputs = [], []
    for length in range(1, MAX_LEN + 1):
        for seq in itertools.product(VOCAB, repeat=length):
            out = model.apply(["BOS", *seq]).decoded[1:]
            inputs.append([model.input_encoder.encoding_map[t] for t in ("BOS", *seq)])
            outputs.append([values.index(o) if categorical else float(o) for o in out])
    meta = {
        "name": name,
        "labels": labels,
        "out_labels": out_labels,
        "categorical": categorical,
        "vocab": model.input_encoder.encoding_map,
        "num_heads": model.model_config.num_heads,
        "key_size": model.model_config.key_size,
        "mlp_hidden_size": model.model_config.mlp_hidden_size,
        "num_layers": model.model_config.num_layers,
        "causal": model.model_config.causal,
        "max_len": MAX_LEN,
    }
    path = FIXTURES / f"tracr_{name}.npz"
    FIXTURES.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        meta=np.array(json.dumps(meta)),
        unembed=unembed,
        inputs=np.array(json.dumps(inputs)),
        outputs=np.array(json.dumps(outputs)),
        **arrays,
    )
    return path


if __name__ == "__main__":
    for name, program in programs().items():
        p = compile_one(name, program)
        print(f"{p}: {p.stat().st_size} bytes")
