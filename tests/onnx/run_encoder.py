"""Runs one exported encoder graph in onnxruntime on the CPU.

usage: run_encoder.py MODEL.onnx PIXEL_VALUES.npy FIRST_CHANNEL OUT.npy

Takes channels FIRST_CHANNEL..FIRST_CHANNEL+3 of the policy's pixel_values ([6, S, S] or
[1, 6, S, S]), feeds them as the graph's only input, saves its only output to OUT.npy and
prints the graph's input and output names and shapes as one JSON line.
"""
import json
import sys

import numpy as np
import onnxruntime as ort


def main():
    model, pixels, first, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    values = np.load(pixels).astype(np.float32)
    size = values.shape[-1]
    values = values.reshape(-1, size, size)[first : first + 3][None]
    options = ort.SessionOptions()
    # The reference is the graph as written: no fusions that change the arithmetic.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    inputs, outputs = session.get_inputs(), session.get_outputs()
    (result,) = session.run(None, {inputs[0].name: np.ascontiguousarray(values)})
    np.save(out, result.astype(np.float32))
    print(json.dumps({
        "inputs": [[i.name, i.shape] for i in inputs],
        "outputs": [[o.name, o.shape] for o in outputs],
    }))


if __name__ == "__main__":
    main()
