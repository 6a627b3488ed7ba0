"""Per-example training losses in the style of ``optax.losses``."""

__all__: list[str] = []
