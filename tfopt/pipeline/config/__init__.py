"""A recipe's configuration: YAML read within limits (``_yaml``), the sections and their keys (``sections``), the
specs a validated recipe is made of (``specs``), cross-field checks (``checks``) and ``load_recipe`` (``recipe``)."""
