"""One package per part-discovery method (model, objective, config, converter).

Self-contained for now: the ``Method`` adapter that plugs them into the engine comes with the
engine refactor."""
