"""``from bench.sam import SAM``: the documented path of the optimizer wrapper (bench.engine.sam)."""
from bench.engine.sam import SAM, make_variant  # noqa: F401
