"""The built-in simulated world: tasks with gold rewards, tiny models, simulated annotators."""
