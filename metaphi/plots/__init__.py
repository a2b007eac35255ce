"""Pictures: learning curves, episode grids, regression fits, forecasts (PNG, Agg backend)."""
