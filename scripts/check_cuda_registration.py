"""Asserts that a CUDA build of autoenc_fast registers a CUDA kernel for every op.

Run from the folder holding the freshly built package (no GPU needed).
"""
import torch

import autoenc_fast
from autoenc_fast import _ext
from autoenc_fast._info import OPS
from autoenc_fast.ops import CUDA_BACKENDS

assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"
assert _ext.LOADED, _ext.STATUS
info = autoenc_fast.info()
assert info["built_with_cuda"], "the extension was built without its CUDA sources"
# Every schema in the namespace (forward, backward and piece ops) has a CUDA kernel.
every_op = sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("autoenc_fast::"))
missing = [name for name in every_op if not torch._C._dispatch_has_kernel_for_dispatch_key(name, "CUDA")]
assert not missing, f"ops without a CUDA kernel: {missing}"
print(f"{len(every_op)} autoenc_fast ops, each with a CUDA kernel")
for op in OPS:
    table = torch._C._dispatch_dump(f"autoenc_fast::{op}")
    cuda_line = next(line for line in table.splitlines() if line.startswith("CUDA"))
    if CUDA_BACKENDS[op] == "CUDA C++":
        assert ".cu" in cuda_line, f"{op}: CUDA kernel is not the compiled one: {cuda_line}"
    print(f"{op:>20}: {CUDA_BACKENDS[op]:<9} {cuda_line}")
print(f"CUDA build OK: torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"arch list {info['built_cuda_arch_list']}")
