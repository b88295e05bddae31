"""Comparisons of training configurations over seeds with paired statistics, on the tuner core
(`mdm.platform.tuner`)."""
