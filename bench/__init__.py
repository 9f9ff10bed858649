"""nex's benchmark suite: every figure beside a floor measured in the same run, on stubs."""
