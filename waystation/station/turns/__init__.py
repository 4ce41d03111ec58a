"""Turns: the engine that drives a model through tool calls, and the turns' stored records."""
