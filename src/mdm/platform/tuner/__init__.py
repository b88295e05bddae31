"""The tuner core that sweeps (`mdm.platform.sweep`) and comparisons (`mdm.platform.compare`) share: the search
space, the `tune` section, Tune's terminal table, the MLflow parent run and the Tune experiment itself."""
