"""What `actsparse.compile()` checks and turns into pipeline options before the (slow) import: the mode, the
memory budget, the example inputs, a lossy mode's calibration/sparsity/method and the predictor's settings. An option
the mode does not use is an error, not silently ignored."""

from __future__ import annotations

import numpy as np

from .errors import ActsparseError, MemoryBudgetError
from .passes.pipeline import BUDGET_MODES, LOSSY_MODES, MODES


def check_mode(mode: str, memory_budget) -> int | None:
    """The mode is known; the memory budget (bytes, or text like "512M") in bytes, for a mode that splits."""
    if mode not in MODES:
        raise ActsparseError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    if memory_budget is None:
        return None
    budget = parse_bytes(memory_budget)
    if mode not in BUDGET_MODES:
        raise MemoryBudgetError(f"memory_budget applies to modes {', '.join(BUDGET_MODES)} (ReLU-family blocks "
                                f"split into hot and cold neurons), not mode={mode!r}")
    return budget


def parse_bytes(value) -> int:
    """A byte count: an int, or text such as "512M", "1.5G", "64k", "2GiB" (powers of 1024). Negative is an error."""
    import re

    pattern = r"([-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*([kKmMgGtT]?)i?[bB]?"
    match = None if isinstance(value, bool) else re.fullmatch(pattern, str(value).strip())
    try:
        if match is None or not match.group(1):
            raise ValueError
        scale = 1 << (10 * " KMGT".index(match.group(2).upper() or " "))
        number = float(match.group(1))
        budget = int(number * scale)
    except (ValueError, OverflowError):
        raise MemoryBudgetError(f"memory_budget must be a number of bytes such as 536870912 or '512M', got "
                                f"{value!r}") from None
    if scale == 1 and number >= 0 and number != budget:  # 0.6 is not "60% of the weights": a fraction of a byte
        raise MemoryBudgetError(f"memory_budget is a count of bytes, got {value!r}, which is not a whole number of "
                                "bytes; give the bytes of fast memory for the MLP weights, e.g. '512M' or '1.5G' "
                                "(a share of the weights is not accepted)")
    if budget < 0:
        raise MemoryBudgetError(f"memory_budget must not be negative (got {value!r}); give the bytes of fast memory "
                                "for the MLP weights, e.g. '512M'")
    return budget


def budget_options(budget: int, calibration, example_arrays) -> dict:
    """The hot/cold split's options: neuron frequencies come from `calibration`, or else from the example inputs."""
    from .passes.calibrate import calibration_samples

    samples = calibration_samples(calibration) if calibration is not None else [tuple(example_arrays)]
    return {"memory_budget": budget, "calibration": samples}


def check_example_inputs(example_inputs) -> None:
    """A tuple (or list) of inputs, one per model input; a bare tensor is refused rather than unpacked along its
    batch axis."""
    if example_inputs is None or isinstance(example_inputs, (tuple, list)):
        return
    if hasattr(example_inputs, "shape"):
        raise ActsparseError(f"example_inputs must be a tuple with one entry per model input, got a bare "
                             f"{type(example_inputs).__name__}; wrap it: (input_ids,)")
    raise ActsparseError(f"example_inputs must be a tuple with one entry per model input, got a "
                         f"{type(example_inputs).__name__}")


def lossy_options(mode: str, calibration, sparsity, method, predictor_options: dict) -> dict:
    """Check a lossy mode's arguments before the (slow) import; returns pipeline_for's options. An option the
    mode does not use is an error, not silently ignored."""
    given = {k: v for k, v in predictor_options.items() if v is not None}
    if mode != "predictor" and given:
        raise ActsparseError(f"{', '.join(given)} apply to mode='predictor', not mode={mode!r}")
    if mode == "predictor":
        if method is not None:
            raise ActsparseError(f"method={method!r} applies to mode='threshold', not mode={mode!r}")
        return predictor_settings(calibration, sparsity, given)
    if mode not in LOSSY_MODES:
        given = [f"{k}={v!r}"[:60] for k, v in (("calibration", calibration), ("sparsity", sparsity),
                                                 ("method", method)) if v is not None]
        if given:
            raise ActsparseError(f"{', '.join(given)}: mode={mode!r} does not use them (only "
                                 f"{', '.join(map(repr, LOSSY_MODES))} does); leave them out or pick that mode")
        return {}
    from .passes.calibrate import calibration_samples
    from .passes.sparsity_methods import DEFAULT_METHOD, FALLBACK_METHOD, METHODS

    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating, np.integer)) \
            or not 0.0 < float(sparsity) < 1.0:
        raise ActsparseError(f"mode={mode!r} needs a target sparsity, a number between 0 and 1 (exclusive), "
                             f"e.g. sparsity=0.5 (got {sparsity!r})")
    if method is not None and method not in METHODS:
        raise ActsparseError(f"unknown threshold method {method!r}; valid methods: {', '.join(METHODS)}")
    # a method the user named applies to every block (one it cannot take is an error); the default gives way
    return {"calibration": calibration_samples(calibration), "sparsity": float(sparsity),
            "method": method or DEFAULT_METHOD, "fallback_method": None if method else FALLBACK_METHOD}


def needs_calibration(mode: str, predictor: str | None = None) -> bool:
    """Whether `mode` (with `predictor` in mode 'predictor') fits anything to calibration data; an unknown name is
    lossy_options' error, not this one's."""
    if mode == "predictor":
        from .passes.predictors import KINDS

        kind = KINDS.get(predictor or "lowrank")
        return kind is not None and kind.calibrated
    return mode in LOSSY_MODES


def predictor_settings(calibration, sparsity, given: dict) -> dict:
    from .ir.predictor import PREDICTORS
    from .passes.calibrate import calibration_samples
    from .passes.predictors import KINDS, PredictorError

    calibrated = [k for k, spec in KINDS.items() if spec.calibrated]

    kind = given.get("predictor", "lowrank")
    if kind not in PREDICTORS:
        raise ActsparseError(f"unknown predictor {kind!r}; valid predictors: {', '.join(PREDICTORS)}")
    if calibration is None and kind in calibrated:
        raise PredictorError("mode='predictor' needs calibration data to fit the predictors: pass calibration="
                             "[(input_ids,), ...], input tuples like example_inputs (a few thousand tokens); "
                             "predictor='bound' (lossless) needs none")
    recall, budget = float(given.get("recall", 0.99)), float(given.get("predictor_budget", 0.1))
    if not 0.0 < recall <= 1.0 or not 0.0 < budget <= 1.0:
        raise ActsparseError(f"recall must be in (0, 1] and predictor_budget in (0, 1]; got recall={recall}, "
                             f"predictor_budget={budget}")
    if sparsity is not None and not 0.0 <= float(sparsity) < 1.0:
        raise ActsparseError(f"sparsity (the floor on the predicted sparsity) must be in [0, 1), got {sparsity!r}")
    samples = calibration_samples(calibration) if calibration is not None else []
    return {"calibration": samples, "sparsity": float(sparsity or 0.0), "predictor": kind,
            "recall": recall, "predictor_budget": budget}
