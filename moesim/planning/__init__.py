"""Planning: evaluate one scenario, compare layouts, sweep grids, plan a deployment."""
