"""Part-discovery methods, one package each (see docs / STYLE: a method is its model, losses,
config section, converter and tests). Nothing here is imported by ``partformer`` itself yet."""
