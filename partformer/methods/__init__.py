"""Part-discovery methods, one package each (its model, losses, config section, converter; its
tests in tests/). Nothing in ``partformer`` imports them yet: the engine adapter comes later."""
