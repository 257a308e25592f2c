"""Runs ONNX graphs on given inputs and saves their outputs, as a script of its own (numpy and
onnxruntime only, no package import) so that it can run under a CPU emulator: the int8 ISA test and
bench/bench_int8_isa.py start it as ``qemu-x86_64 -cpu Haswell python graph_runner.py ...`` (an AVX2
CPU without VNNI).

usage: python graph_runner.py INPUTS.npz OUT.npz NAME=GRAPH.onnx ...   (each graph gets the arrays of
INPUTS.npz named after its inputs; outputs are saved as NAME/OUTPUT)"""

import sys

import numpy as np
import onnxruntime as ort


def main() -> None:
    feeds, out = np.load(sys.argv[1]), sys.argv[2]
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    results = {}
    for arg in sys.argv[3:]:
        name, path = arg.split("=", 1)
        s = ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
        res = s.run(None, {i.name: feeds[i.name] for i in s.get_inputs()})
        for o, r in zip(s.get_outputs(), res):
            results[f"{name}/{o.name}"] = r
    np.savez(out, **results)


if __name__ == "__main__":
    main()
