"""GPU slices as a resource: NVML discovery, slice accounting, sandbox binding, a fake NVML.

- `discovery`: GPUs, MIG mode and instances, read through NVML (or the fake) at start;
- `slices`: the pure accounting of slice units per GPU (MIG by instances; MPS and
  time-slicing by shares), and the views the controller, the API and the metrics show;
- `binding`: the environment and onnxruntime options of a sandbox bound to a slice, and the
  `X-Faasd-Device` label of its answers;
- `mps`: the MPS control daemon faasd starts and supervises;
- `service`: the daemon's shell around them; `settings`: the `gpu:` section of faasd.yaml;
- `nvml`: the one place `pynvml` is imported; `fake`: the fake machines for CI and demos.

Only this package imports NVML (STYLE rule 12); only the daemon process uses it.
"""
