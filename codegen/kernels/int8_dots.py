"""The 4-way 8-bit dot instructions the int8 row dots run on, as one table (`INT8_DOTS`, picked by the schedule's
`int8_dot`, codegen/schedules.py): how each is emitted (one accumulating intrinsic, or AVX2's two steps), which
layouts it serves (a saturating pair sum may serve only those whose byte pairs fit int16) and which of the row
axpys run on it. quant_int8.py builds the row dots on them.
"""

from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from ...ir.quant import LAYOUTS


@dataclass(frozen=True)
class Int8Dot:
    """A 4-way dot instruction: int32 lanes = acc + per lane the sum of 4 byte products of a and b."""

    intrinsic: str      # LLVM intrinsic (acc: int32 x lanes, a and b: 8-bit x 4 * lanes)
    lanes: int          # int32 lanes (= the fp32 lanes the block scaling runs on)
    signed_a: bool      # a is signed (sdot) rather than unsigned (vpdpbusd's u8): q8_0 codes then go in as they are
    axpy: tuple[str, ...] = ()  # layouts whose row axpy runs on it too (quant_axpy8.py: coefficients rounded per
                                # step to int8). Not q8_0 on VNNI: its float axpy (one widening per 16 codes)
                                # timed as fast; on aarch64 the integer one saves only 409 -> 317 instructions per
                                # 8 rows x 32 columns (q4: 473 -> 212), untimed (BENCHMARKS.md, session 7)
    nibble_lookup: str = ""  # the same ISA's 16-entry fp32 table lookup by the low 4 bits of int32 lanes (LLVM
                             # intrinsic (table, indices) -> float32 x 16), which the float axpy of q4 rows takes
                             # instead of mask / shift / widen / convert (quant_axpy.quant_axpy_macro); "": none
    coefficient_table: bool = False  # the integer axpy of split rows (q4_0) rounds a step's coefficients for 16
                                     # groups per vector into a table before its group loop (quant_axpy8.py):
                                     # AVX-512 0.79x the time (dense, BENCHMARKS.md session 11), AVX2 0.73x
                                     # (session 18)
    pair_sum: str = ""  # "": `intrinsic` is the accumulating 4-way dot. Else the dot takes two steps (AVX2, no
                        # VNNI): `intrinsic` multiplies a (u8) by b (s8) and sums byte pairs to int16, saturating
                        # (vpmaddubsw), this one sums int16 pairs against ones to int32 (vpmaddwd), added to acc
    layouts: tuple[str, ...] = tuple(LAYOUTS)  # the layouts whose row dots it serves (others keep the float
                                               # path): a saturating pair sum may serve only those whose byte
                                               # pairs fit int16 (q4 nibbles x x̂: |pair| <= 2 * 15 * 128)
    axpy_interleave: int = 4  # rows whose code bytes share an output column's lane in the integer q4 axpy
                              # (quant_axpy8.py): 4, the 4-way dot's int32 lane; 2, a pair-sum dot's int16 lane
                              # (`intrinsic` alone, the pairs' int16 sums sign-extended per group: AVX2 has no
                              # cross-lane byte shuffle, so a 4-row interleave costs ~13 shuffles per 8 columns)
    sign_trick: str = ""  # the byte-sign intrinsic (vpsignb) by which signed q8_0 codes go in on the u8 x s8 dot:
                          # |code| (u8, 0..128) times sign(x̂, code) (|x̂| <= 127): pairs <= 2 * 128 * 127 fit int16,
                          # where x̂ + 128 times codes (up to 2 * 255 * 127) would saturate; x̂ then goes in signed
    int16_axpy: tuple[str, ...] = ()  # layouts of `axpy` whose row axpy runs on `pair_sum` alone (vpmaddwd: int16 x
                                      # int16 pairs -> int32), codes sign-extended to int16 and the coefficients
                                      # rounded to int16 (quant_axpy16.py): q8_0 on AVX2, whose codes saturate
                                      # `intrinsic`'s pairs
    split_q8: bool = False  # split q8_0 rows take one row per vector and 4 groups per iteration (quant_split8.py):
                            # a group's 32 codes one load, 4 scales one; on AVX2 the 4-rows form (quant_int8.py)
                            # gathered 2 rows' 16 codes and scales per vector

    @property
    def signed_codes(self) -> bool:
        """q8_0 codes and x̂ multiply as they are (signed), on an s8 x s8 dot or by the sign trick."""
        return self.signed_a or bool(self.sign_trick)

    def signed_dot(self, acc, codes, x):
        """acc + the 4-way dot of signed codes and x̂ per lane (`dot`, or on a u8 operand by `sign_trick`)."""
        if not self.sign_trick:
            return self.dot(acc, codes, x)
        vec = f"uint8x{4 * self.lanes}"
        return self.dot(acc, T.call_llvm_pure_intrin(vec, self.sign_trick, codes, codes),
                        T.call_llvm_pure_intrin(vec, self.sign_trick, x, codes))

    def dot(self, acc, a, b):
        """int32 x lanes: acc + per lane the sum of 4 byte products of a and b (byte vectors, 4 * lanes)."""
        ivec = f"int32x{self.lanes}"
        if not self.pair_sum:
            return T.call_llvm_pure_intrin(ivec, self.intrinsic, acc, a, b)
        return self.dots(acc, (a, b))

    def dots(self, acc, *operands):
        """acc + the dots of each (a, b) of `operands`. With `pair_sum`, the int16 pair sums of all add up before one
        widening to int32 (one vpmaddwd and one add per block, not per half): a layout it serves keeps them within
        int16 (q4: two halves' pairs, |sum| <= 2 * 2 * 15 * 128)."""
        if not self.pair_sum:
            for a, b in operands:
                acc = self.dot(acc, a, b)
            return acc
        pvec = f"int16x{2 * self.lanes}"
        pairs = [T.call_llvm_pure_intrin(pvec, self.intrinsic, a, b) for a, b in operands]
        total = pairs[0]
        for p in pairs[1:]:
            total = total + p
        ivec = f"int32x{self.lanes}"
        return acc + T.call_llvm_pure_intrin(ivec, self.pair_sum, total, T.Broadcast(T.int16(1), 2 * self.lanes))


INT8_DOTS = {
    "vpdpbusd512": Int8Dot("llvm.x86.avx512.vpdpbusd.512", 16, False, axpy=("q4_0", "q4_1"),
                           nibble_lookup="llvm.x86.avx512.permvar.sf.512", coefficient_table=True),  # vpermps
    "vpdpbusd256": Int8Dot("llvm.x86.avx512.vpdpbusd.256", 8, False, axpy=("q4_0", "q4_1")),
    "sdot128": Int8Dot("llvm.aarch64.neon.sdot.v4i32.v16i8", 4, True, axpy=("q4_0", "q4_1")),
    # AVX2 without VNNI (Zen 3, Haswell..Skylake client): llama.cpp's dots, q8_0 by the sign trick; the q4 axpys
    # too (nibbles as the u8 operand times a_j: pairs <= 2 * 15 * 127, quant_axpy_twin.SETS_PER_WIDENING); q8_0's
    # axpy on vpmaddwd alone (its code + 128 would saturate vpmaddubsw; quant_axpy16.py)
    "pmaddubsw256": Int8Dot("llvm.x86.avx2.pmadd.ub.sw", 8, False, axpy=("q4_0", "q4_1", "q8_0"),
                            coefficient_table=True, axpy_interleave=2, pair_sum="llvm.x86.avx2.pmadd.wd",
                            sign_trick="llvm.x86.avx2.psign.b", int16_axpy=("q8_0",), split_q8=True),
}
