"""IR -> TVM: the Relax lowering table (`lower.py`, `lowerings.py`, `lower_kernels.py`) and our TIR kernels."""
