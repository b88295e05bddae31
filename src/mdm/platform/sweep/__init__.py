"""`mdm tune`: hyperparameter sweeps over the trainer, on the tuner core (`mdm.platform.tuner`)."""
