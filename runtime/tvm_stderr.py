"""TVM's C++ lines on stderr that say nothing to our user, dropped; every other line still reaches them.

TVM 0.27's VM executable logs one `Scope Saving:` warning per constant when it is saved (`export_library`) and
one `Scope Loaded:` per constant when it is loaded (src/runtime/vm/executable.cc, `LOG(WARNING)`; the scope
printed is empty for our modules), so `actsparse build` ended in lines like

    [13:23:50] /project/src/runtime/vm/executable.cc:276: Warning: Scope Saving:

TVM's C++ logging writes straight to std::cerr, with no level a caller can set at run time (its `LogMessage`,
include/tvm/runtime/logging.h; TVM_LOG_DEBUG governs only VLOG/DLOG). So the file descriptor 2 itself is
pointed at a temporary file for the TVM call, and afterwards every line of it that is not one of `NOISE` is
written back to fd 2 in order: a real warning or error of TVM's (or a linker's) still shows, just after the
call instead of during it; an exception leaves the block as it came, after the lines.

The build drops one more: TVM's own scatter lowerings (topi scatter_elements / index_put, which a MoE router's
`scatter_` becomes) mark their statement sequences `pragma_scope` for its IR builder, and LLVM's CPU codegen
warns `Unknown pragma pragma_scope` for each (src/target/llvm/codegen_cpu.cc) and then ignores it.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# The lines dropped: TVM's own chatter, matched with its "[hh:mm:ss] <file>:<line>: Warning: " prefix
NOISE = re.compile(rb"^\[\d\d:\d\d:\d\d\] (\S*executable\.cc:\d+: Warning: Scope (Saving|Loaded):"
                   rb"|\S*codegen_cpu\.cc:\d+: Warning: Unknown pragma pragma_scope$)")


@contextlib.contextmanager
def tvm_noise_dropped():
    """Run the block with fd 2 captured; its lines, less TVM's `NOISE`, go back to fd 2 when it ends."""
    try:
        saved = os.dup(2)
    except OSError:  # no fd 2 to capture (a closed stderr): nothing would be seen anyway
        yield
        return
    with tempfile.TemporaryFile() as captured:
        _flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            _flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = b"".join(line for line in captured.read().splitlines(keepends=True) if not NOISE.match(line))
            with contextlib.suppress(OSError):  # a closed pipe must not hide the block's own exception
                while kept:  # back where it was headed, byte for byte
                    kept = kept[os.write(2, kept):]


def _flush() -> None:
    """Python's own buffered stderr text goes where fd 2 pointed when it was written."""
    with contextlib.suppress(Exception):  # a replaced sys.stderr (a notebook's, pytest's) may lack a working flush
        sys.stderr.flush()
