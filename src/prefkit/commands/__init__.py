"""The `prefkit` sub-commands, one module per command group."""
